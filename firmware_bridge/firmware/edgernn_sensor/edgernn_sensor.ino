/*
 * edgernn_sensor.ino - sample N analog inputs on a timer and stream them to an
 * edgernn host (`edgernn run MODEL --port PORT`) as binary frames.
 *
 * Copy edgernn_frame.h and edgernn_frame.c (one folder up) next to this file, set
 * the pins, rate and baud below, upload. Works on AVR (Uno, Nano, Mega: Timer1
 * interrupt) and on ARM / ESP32 / RP2040 boards (sampling paced by micros() from
 * loop(), which is fast enough there).
 *
 * Sampling never waits for the UART: samples go into a ring buffer, and when the
 * UART falls behind the OLDEST sample is dropped and counted. The count travels in
 * the hello frame, the sequence numbers show the gap, and the host reports both.
 *
 * Throughput: one frame is 12 + 4 x channels x SAMPLES_PER_FRAME + 2 bytes plus ~2
 * of framing. 3 channels at 100 Hz is ~2.8 kB/s: fine at 115200 baud. 8 channels
 * at 1 kHz is ~48 kB/s: needs >= 500000 baud, or native USB (the baud is ignored),
 * and an MCU faster than an AVR (analogRead takes ~110 us there).
 */
#include <Arduino.h>

#include "edgernn_frame.h"

// ---- configuration --------------------------------------------------------------
static const uint8_t PINS[] = {A0, A1, A2};
static const char *const NAMES[] = {"temperature", "humidity", "pressure"};
#define RATE_HZ 100UL
#define BAUD 115200UL
#define SAMPLES_PER_FRAME 1  // more per frame: less overhead, more latency
#define RING_SAMPLES 32      // power of two; 32 x 3 channels x 2 bytes of RAM
#define ADC_SCALE (5.0f / 1023.0f)  // counts -> volts; put your sensor's calibration here
// ---------------------------------------------------------------------------------

#define CHANNELS (sizeof(PINS) / sizeof(PINS[0]))
#define FRAME_BYTES EDGERNN_WIRE_SIZE(EDGERNN_DATA_RAW_SIZE(CHANNELS, SAMPLES_PER_FRAME))
#define HELLO_BYTES EDGERNN_WIRE_SIZE(EDGERNN_HEADER_SIZE + 12 + CHANNELS * (1 + EDGERNN_MAX_NAME) + 2)

// The ring buffer holds raw ADC counts (2 bytes, not 4) to save RAM on an Uno.
static volatile uint16_t ring[RING_SAMPLES][CHANNELS];
static volatile uint8_t ring_head = 0;    // next slot to fill
static volatile uint8_t ring_count = 0;   // samples waiting to be sent
static volatile uint32_t oldest_seq = 0;  // seq of the oldest sample in the ring
static volatile uint32_t oldest_us = 0;   // its sampling time
static volatile uint32_t dropped = 0;     // samples lost to a full ring this session

static uint8_t frame[FRAME_BYTES > HELLO_BYTES ? FRAME_BYTES : HELLO_BYTES];
static uint32_t session;
static uint32_t last_hello_ms;

// Called at RATE_HZ (from the timer interrupt on AVR, from loop() elsewhere).
static void sample_now(void) {
  uint8_t i;
  uint32_t now = micros();
  if (ring_count == RING_SAMPLES) {  // UART behind: drop the oldest, count it
    ring_count--;
    oldest_seq++;
    oldest_us += 1000000UL / RATE_HZ;
    dropped++;
  }
  for (i = 0; i < CHANNELS; i++) ring[ring_head][i] = (uint16_t)analogRead(PINS[i]);
  if (ring_count == 0) oldest_us = now;
  ring_head = (uint8_t)((ring_head + 1) & (RING_SAMPLES - 1));
  ring_count++;
}

#if defined(ARDUINO_ARCH_AVR)
// OCR1A is 16 bits: at clock / 8 a 16 MHz board goes no slower than ~31 Hz.
#if F_CPU / 8UL / RATE_HZ > 65536UL
#error "RATE_HZ too low for Timer1 at clock / 8: OCR1A would overflow"
#endif
#ifdef SERIAL_TX_BUFFER_SIZE
// availableForWrite() never exceeds SERIAL_TX_BUFFER_SIZE - 1 (63 on an Uno): a
// larger frame would never be sent.
static_assert(FRAME_BYTES < SERIAL_TX_BUFFER_SIZE,
              "a data frame must fit the TX buffer: fewer SAMPLES_PER_FRAME or channels");
#endif

ISR(TIMER1_COMPA_vect) { sample_now(); }

static void start_sampling(void) {
  noInterrupts();
  TCCR1A = 0;
  TCCR1B = (1 << WGM12) | (1 << CS11);  // CTC mode, clock / 8
  OCR1A = (uint16_t)(F_CPU / 8UL / RATE_HZ - 1);
  TIMSK1 = (1 << OCIE1A);
  interrupts();
}

static void pace_sampling(void) {}
#else
static uint32_t next_sample_us;

static void start_sampling(void) { next_sample_us = micros(); }

static void pace_sampling(void) {
  // Catch up sample by sample if loop() was late, so the rate stays exact.
  while ((int32_t)(micros() - next_sample_us) >= 0) {
    next_sample_us += 1000000UL / RATE_HZ;
    sample_now();
  }
}
#endif

static uint32_t boot_session(void) {
#if defined(ESP32)
  return esp_random();
#else
  // Floating-pin noise and boot timing: different on every boot, which is all a
  // session id needs.
  uint32_t seed = micros();
  uint8_t i;
  for (i = 0; i < 32; i++) seed = (seed << 1) ^ (uint32_t)analogRead(PINS[i % CHANNELS]) ^ micros();
  randomSeed(seed);
  return ((uint32_t)random(0x10000) << 16) ^ (uint32_t)random(0x10000) ^ seed;
#endif
}

static void send_hello(void) {
  uint32_t seq, drops;
  noInterrupts();
  seq = oldest_seq;  // the next sample to go out is the oldest queued
  drops = dropped;
  interrupts();
  size_t n = edgernn_encode_hello(frame, sizeof frame, session, (float)RATE_HZ, drops, seq,
                                  micros(), CHANNELS, NAMES);
  if (n) Serial.write(frame, n);
  last_hello_ms = millis();
}

// Take up to SAMPLES_PER_FRAME samples off the ring and send them as one frame, if
// the UART has room for it (never block: sampling must not wait for the wire).
static void send_samples(void) {
  float values[SAMPLES_PER_FRAME * CHANNELS];
  uint8_t s, i, n, tail;
  uint32_t seq, t_us;
  if (ring_count < SAMPLES_PER_FRAME) return;
  if (Serial.availableForWrite() < (int)FRAME_BYTES) return;
  noInterrupts();
  n = SAMPLES_PER_FRAME;
  tail = (uint8_t)((ring_head - ring_count) & (RING_SAMPLES - 1));
  for (s = 0; s < n; s++) {
    uint8_t slot = (uint8_t)((tail + s) & (RING_SAMPLES - 1));
    for (i = 0; i < CHANNELS; i++) values[s * CHANNELS + i] = (float)ring[slot][i];
  }
  seq = oldest_seq;
  t_us = oldest_us;
  ring_count -= n;
  oldest_seq += n;
  oldest_us += n * (1000000UL / RATE_HZ);
  interrupts();
  for (s = 0; s < n * CHANNELS; s++) values[s] *= ADC_SCALE;
  size_t len = edgernn_encode_data(frame, sizeof frame, seq, t_us, CHANNELS, n, values);
  if (len) Serial.write(frame, len);
}

void setup() {
  Serial.begin(BAUD);
  session = boot_session();
  Serial.write((uint8_t)0);  // a delimiter first: ends whatever noise came before
  send_hello();
  start_sampling();
}

void loop() {
  pace_sampling();
  send_samples();
  if (millis() - last_hello_ms >= 1000) send_hello();
}
