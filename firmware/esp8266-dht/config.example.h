// config.example.h — settings for the esp8266-dht sketch.
//
// HOW TO USE
//   1. Copy this file to `config.h` in the same folder (firmware/esp8266-dht/).
//   2. Fill in your values below.
//   3. Build and flash (see firmware/README.md).
//
// `config.h` is git-ignored (firmware/.gitignore): it holds your Wi-Fi password
// and broker credentials, so it must never be committed. Keep this example file
// free of real secrets.
//
// Every setting marked (optional) may be deleted from config.h; the sketch then
// uses the default shown. The (required) ones must be present.

#pragma once

// ---------------------------------------------------------------------------
// Wi-Fi (required). 2.4 GHz only: the ESP8266 has no 5 GHz radio.
// ---------------------------------------------------------------------------
#define WIFI_SSID      "your-wifi-ssid"
#define WIFI_PASSWORD  "your-wifi-password"

// (optional) DHCP host name announced by the module. "" keeps the SDK default
// ("ESP-xxxxxx"). Letters, digits and '-' only.
#define WIFI_HOSTNAME  ""

// ---------------------------------------------------------------------------
// Broker (required host; port optional)
// ---------------------------------------------------------------------------
// Host name or IPv4 address of the mqtt-broker. With MQTT_TLS_CA this must be a
// DNS name from the broker certificate's subjectAltName (BearSSL checks names,
// not IP addresses); for a broker reached by IP use MQTT_TLS_FINGERPRINT.
#define MQTT_HOST      "192.168.1.10"

// (optional) TCP port. Default: 1883 without TLS, 8883 with TLS.
// #define MQTT_PORT   1883

// (optional) MQTT username / password. "" = do not send (anonymous).
// A password is only sent together with a username (MQTT 3.1.1 rule).
#define MQTT_USERNAME  ""
#define MQTT_PASSWORD  ""

// ---------------------------------------------------------------------------
// TLS (optional). One of:
//   MQTT_TLS_NONE         plain TCP (default port 1883)
//   MQTT_TLS_CA           BearSSL validates the broker certificate against the
//                         CA certificate in MQTT_CA_CERT (setTrustAnchors).
//                         Needs the current time, so the sketch gets it over NTP
//                         first (NTP_SERVER_1/2 must be reachable).
//   MQTT_TLS_FINGERPRINT  BearSSL only checks the SHA-1 fingerprint of the
//                         broker's leaf certificate (setFingerprint). No NTP
//                         needed, but you must reflash when the cert changes.
//   MQTT_TLS_INSECURE     encrypt but do NOT verify the broker (setInsecure).
//                         Lab use only; the build prints a warning.
// The ESP8266's BearSSL speaks TLS 1.2 (not 1.3) with RSA or ECDSA (P-256/P-384)
// certificates; the broker must offer TLS 1.2.
// ---------------------------------------------------------------------------
#define MQTT_TLS_MODE  MQTT_TLS_NONE

// For MQTT_TLS_FINGERPRINT: SHA-1 of the broker certificate, as 20 hex bytes
// separated by ':' or ' '. Get it with:
//   openssl s_client -connect BROKER:8883 -servername BROKER </dev/null | openssl x509 -noout -fingerprint -sha1
#define MQTT_TLS_FINGERPRINT_SHA1 "00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00:00"

// For MQTT_TLS_CA: the PEM of the CA that signed the broker certificate (or the
// broker's self-signed certificate itself). Paste between the R"PEM( and )PEM"
// markers, BEGIN/END lines included. This placeholder is not a real certificate.
static const char MQTT_CA_CERT[] PROGMEM = R"PEM(
-----BEGIN CERTIFICATE-----
PASTE-YOUR-CA-CERTIFICATE-HERE
-----END CERTIFICATE-----
)PEM";

// (optional, MQTT_TLS_CA only) NTP servers used to learn the time for the
// certificate date check. Use a LAN NTP server if the device has no Internet.
#define NTP_SERVER_1   "pool.ntp.org"
#define NTP_SERVER_2   "time.nist.gov"

// ---------------------------------------------------------------------------
// Device identity and topics
// ---------------------------------------------------------------------------
// (required) Short id of this device; becomes one topic level, so no '/', '+',
// '#' or spaces. Must be unique among your devices.
#define DEVICE_ID      "aloys"

// (optional) MQTT client id. "" (default) = DEVICE_ID + "-" + the last 6 hex
// digits of the chip id, e.g. "aloys-1a2b3c", so two boards flashed with the
// same config.h do not keep kicking each other off the broker. Keep it <= 23
// characters for strict MQTT 3.1.1 brokers.
#define MQTT_CLIENT_ID ""

// (optional) Topic prefix, put in front of DEVICE_ID. Include the trailing '/'.
// With the defaults the device publishes:
//   sensors/aloys/temperature   "25.5"
//   sensors/aloys/humidity      "41.0"
//   sensors/aloys/status        "online" / "offline"   (retained)
// "" gives aloys/temperature etc.
#define TOPIC_PREFIX   "sensors/"

// (optional) Publish {TOPIC_PREFIX}{DEVICE_ID}/temperature and /humidity. 1/0.
#define PUBLISH_SPLIT_TOPICS 1

// (optional) Also publish the temperature on the legacy combined topic of the
// original seed sketch: {LEGACY_TOPIC_PREFIX}{DEVICE_ID}{LEGACY_TOPIC_SUFFIX},
// i.e. "sensors_aloys/dht" -> "25.5". Set to 0 once nothing reads it any more.
#define PUBLISH_LEGACY_TOPIC 1
#define LEGACY_TOPIC_PREFIX  "sensors_"
#define LEGACY_TOPIC_SUFFIX  "/dht"

// (optional) Publish the retained {prefix}{device}/status "online" after each
// connect, with a retained last will "offline" (QoS 1). 1/0.
#define PUBLISH_STATUS 1

// ---------------------------------------------------------------------------
// Readings
// ---------------------------------------------------------------------------
// (optional) Milliseconds between two readings. Minimum 2000 (the DHT22 cannot
// be read faster). Default 30000. Every reading is published at QoS 0.
#define PUBLISH_INTERVAL_MS 30000

// (optional) Decimal places in the payload: 1 -> "25.5". Default 1.
#define PAYLOAD_DECIMALS 1

// (optional) 1 = temperature in °F, 0 = °C (default).
#define TEMPERATURE_FAHRENHEIT 0

// (optional) What to do when the sensor read fails (the DHT library returns NaN:
// sensor missing, bad wiring, missing pull-up, read too early after power-up):
//   1 = publish the text "nan" on the value's topics (default; the broker-side
//       bridge routes non-numeric readings to its error topic, so failures are
//       visible centrally)
//   0 = skip that value for this interval (failures only show on the serial log)
#define PUBLISH_NAN 1

// ---------------------------------------------------------------------------
// DHT sensor
// ---------------------------------------------------------------------------
// (optional) GPIO number of the data pin. Default 2 (= D4 on NodeMCU / D1 mini /
// ESP-12E boards; it also drives the blue on-board LED, which will flicker).
#define DHT_PIN        2

// (optional) DHT22 (also AM2302), DHT11 or DHT21 (AM2301). Default DHT22.
#define DHT_TYPE       DHT22

// ---------------------------------------------------------------------------
// MQTT session details (optional; the defaults suit the mqtt-broker)
// ---------------------------------------------------------------------------
// Keep-alive in seconds (PubSubClient default 15). The broker drops a client it
// has heard nothing from for 1.5 x keep-alive (22.5 s at 15 s).
#define MQTT_KEEPALIVE_S 15

// Seconds PubSubClient waits for CONNACK / for reading a packet. Lower than the
// library default of 15 so a dead broker blocks the loop for less time.
#define MQTT_SOCKET_TIMEOUT_S 5

// Reconnect backoff: first retry after ~1 s, doubling up to 60 s, each wait
// shortened by up to 25 % of random jitter.
#define RECONNECT_MIN_MS 1000
#define RECONNECT_MAX_MS 60000
