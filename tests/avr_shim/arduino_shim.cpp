/*
 * arduino_shim.cpp - the test-only Arduino core behind tests/avr_shim/Arduino.h:
 * just enough of the AVR core for edgernn_sensor.ino to link and run on an
 * atmega328p (real or simulated). Mirrors the core's choices: Timer0 at clock / 64
 * with an overflow interrupt for micros(), ADC at clock / 128 with AVcc reference,
 * USART0 at 2x speed with a 64-byte TX ring emptied by the UDRE interrupt.
 */
#include <Arduino.h>

// ---- time: Timer0 overflows every 256 x 64 cycles ---------------------------------
static volatile unsigned long timer0_overflows = 0;

ISR(TIMER0_OVF_vect) { timer0_overflows++; }

unsigned long micros(void) {
  unsigned long ovf;
  uint8_t t, sreg = SREG;
  cli();
  ovf = timer0_overflows;
  t = TCNT0;
  if ((TIFR0 & (1 << TOV0)) && t < 255) ovf++;  // an overflow not yet serviced
  SREG = sreg;
  return ((ovf << 8) + t) * (64UL / (F_CPU / 1000000UL));
}

unsigned long millis(void) { return micros() / 1000UL; }

// ---- ADC ----------------------------------------------------------------------------
int analogRead(uint8_t pin) {
  if (pin >= 14) pin -= 14;
  ADMUX = (uint8_t)((1 << REFS0) | (pin & 0x07));
  ADCSRA |= (1 << ADSC);
  while (ADCSRA & (1 << ADSC)) {
  }
  uint8_t low = ADCL;  // ADCL first: it latches ADCH
  uint8_t high = ADCH;
  return (high << 8) | low;
}

// ---- random -------------------------------------------------------------------------
void randomSeed(unsigned long seed) {
  if (seed != 0) srandom(seed);
}

long random(long howbig) { return howbig == 0 ? 0 : (long)(::random() % howbig); }

// ---- Serial -------------------------------------------------------------------------
static volatile uint8_t tx_buffer[SERIAL_TX_BUFFER_SIZE];
static volatile uint8_t tx_head = 0;  // next slot to fill
static volatile uint8_t tx_tail = 0;  // next byte to send

static void tx_next_byte(void) {
  UDR0 = tx_buffer[tx_tail];
  tx_tail = (uint8_t)((tx_tail + 1) % SERIAL_TX_BUFFER_SIZE);
  if (tx_head == tx_tail) UCSR0B &= (uint8_t)~(1 << UDRIE0);
}

ISR(USART_UDRE_vect) { tx_next_byte(); }

void HardwareSerial::begin(unsigned long baud) {
  uint16_t setting = (uint16_t)((F_CPU / 4 / baud - 1) / 2);
  UCSR0A = (1 << U2X0);
  UBRR0H = (uint8_t)(setting >> 8);
  UBRR0L = (uint8_t)setting;
  UCSR0C = (1 << UCSZ01) | (1 << UCSZ00);  // 8N1
  UCSR0B = (1 << TXEN0);
}

int HardwareSerial::availableForWrite(void) {
  uint8_t head, tail, sreg = SREG;
  cli();
  head = tx_head;
  tail = tx_tail;
  SREG = sreg;
  if (head >= tail) return SERIAL_TX_BUFFER_SIZE - 1 - head + tail;
  return tail - head - 1;
}

size_t HardwareSerial::write(uint8_t b) {
  uint8_t next = (uint8_t)((tx_head + 1) % SERIAL_TX_BUFFER_SIZE);
  while (next == tx_tail) {
    // Full. With interrupts off the UDRE interrupt cannot run: empty it by polling.
    if (!(SREG & (1 << SREG_I)) && (UCSR0A & (1 << UDRE0))) tx_next_byte();
  }
  tx_buffer[tx_head] = b;
  uint8_t sreg = SREG;
  cli();
  tx_head = next;
  UCSR0B |= (1 << UDRIE0);
  SREG = sreg;
  return 1;
}

size_t HardwareSerial::write(const uint8_t *buffer, size_t size) {
  for (size_t i = 0; i < size; i++) write(buffer[i]);
  return size;
}

HardwareSerial Serial;

// ---- main, as the core's: init the hardware, then setup() and loop() forever ------
int main(void) {
  TCCR0A = 0;
  TCCR0B = (1 << CS01) | (1 << CS00);  // clock / 64
  TIMSK0 = (1 << TOIE0);
  ADCSRA = (1 << ADEN) | (1 << ADPS2) | (1 << ADPS1) | (1 << ADPS0);  // clock / 128
  sei();
  setup();
  for (;;) loop();
}
