/*
 * Arduino.h - a minimal, test-only stand-in for the Arduino AVR core, so that
 * tests/test_firmware_avr.py can build firmware/edgernn_sensor/edgernn_sensor.ino
 * unchanged with avr-g++ against avr-libc (the real core is not installed here).
 *
 * It declares only what the sketch uses, with the core's names and types, and
 * arduino_shim.cpp implements them on the atmega328p's registers the way the core
 * does (Timer0 overflow for micros(), the ADC for analogRead(), a 64-byte interrupt-
 * driven TX ring on USART0 for Serial), so the built image also runs in simavr.
 * Build with -DF_CPU=16000000UL -DARDUINO_ARCH_AVR, as the Arduino IDE does for an Uno.
 */
#ifndef EDGERNN_TEST_ARDUINO_SHIM_H
#define EDGERNN_TEST_ARDUINO_SHIM_H

#include <avr/interrupt.h>
#include <avr/io.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#define interrupts() sei()
#define noInterrupts() cli()

static const uint8_t A0 = 14;
static const uint8_t A1 = 15;
static const uint8_t A2 = 16;
static const uint8_t A3 = 17;
static const uint8_t A4 = 18;
static const uint8_t A5 = 19;

unsigned long micros(void);
unsigned long millis(void);
int analogRead(uint8_t pin);
void randomSeed(unsigned long seed);
long random(long howbig);

#define SERIAL_TX_BUFFER_SIZE 64

class HardwareSerial {
 public:
  void begin(unsigned long baud);
  int availableForWrite(void);
  size_t write(uint8_t b);
  size_t write(const uint8_t *buffer, size_t size);
};

extern HardwareSerial Serial;

void setup(void);
void loop(void);

#endif /* EDGERNN_TEST_ARDUINO_SHIM_H */
