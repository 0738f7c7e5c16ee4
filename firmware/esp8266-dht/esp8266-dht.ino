/*
  esp8266-dht — DHT11/DHT22 temperature and humidity over MQTT 3.1.1.

  Made for the mqtt-broker project (firmware/README.md has the how-to). The sketch:
    * joins Wi-Fi and keeps rejoining it;
    * connects to the broker with PubSubClient (clean session, keep-alive 15 s,
      optional username/password, optional TLS through BearSSL);
    * sets a retained last will  {prefix}{device}/status = "offline" (QoS 1) and
      publishes a retained "online" there right after each connect;
    * every PUBLISH_INTERVAL_MS reads the DHT and publishes bare numbers at QoS 0:
        {prefix}{device}/temperature   "25.5"
        {prefix}{device}/humidity      "41.0"
        sensors_{device}/dht           "25.5"   (legacy topic: temperature)
      A failed sensor read is published as "nan" (or skipped, PUBLISH_NAN 0);
    * reconnects with exponential backoff (1 s doubling to 60 s, with jitter)
      driven by millis(): loop() never sleeps, so the Wi-Fi stack keeps running.

  All settings live in config.h (copy config.example.h). config.h is git-ignored.
*/

#include <Arduino.h>

// TLS modes for MQTT_TLS_MODE in config.h. They start at 1 so that a misspelled
// or missing name (which the preprocessor reads as 0) is caught below.
#define MQTT_TLS_NONE        1
#define MQTT_TLS_CA          2
#define MQTT_TLS_FINGERPRINT 3
#define MQTT_TLS_INSECURE    4

#if defined(__has_include)
#  if __has_include("config.h")
#    include "config.h"
#  else
#    error "config.h not found. Copy config.example.h to config.h in the esp8266-dht folder (next to esp8266-dht.ino), then set WIFI_SSID, WIFI_PASSWORD, MQTT_HOST and DEVICE_ID. config.h is git-ignored so your secrets stay local. See firmware/README.md."
// Stop here rather than cascade into follow-up errors. (GCC does not fail on
// `#include "config.h"` itself once __has_include said it is missing.)
#    include "config.h is missing - see the error above"
#  endif
#else
#  include "config.h"  // very old compiler without __has_include: fails here if missing
#endif

// ---- required settings -----------------------------------------------------
#ifndef WIFI_SSID
#  error "config.h: WIFI_SSID is not set (see config.example.h)"
#endif
#ifndef WIFI_PASSWORD
#  error "config.h: WIFI_PASSWORD is not set (use \"\" for an open network)"
#endif
#ifndef MQTT_HOST
#  error "config.h: MQTT_HOST is not set (broker host name or IP address)"
#endif
#ifndef DEVICE_ID
#  error "config.h: DEVICE_ID is not set (a short unique name, e.g. \"aloys\")"
#endif

// ---- optional settings and their defaults -------------------------------------
#ifndef WIFI_HOSTNAME
#  define WIFI_HOSTNAME ""
#endif
#ifndef MQTT_TLS_MODE
#  define MQTT_TLS_MODE MQTT_TLS_NONE
#endif
#if MQTT_TLS_MODE != MQTT_TLS_NONE && MQTT_TLS_MODE != MQTT_TLS_CA && \
    MQTT_TLS_MODE != MQTT_TLS_FINGERPRINT && MQTT_TLS_MODE != MQTT_TLS_INSECURE
#  error "config.h: MQTT_TLS_MODE must be MQTT_TLS_NONE, MQTT_TLS_CA, MQTT_TLS_FINGERPRINT or MQTT_TLS_INSECURE"
#endif
#if MQTT_TLS_MODE == MQTT_TLS_FINGERPRINT && !defined(MQTT_TLS_FINGERPRINT_SHA1)
#  error "config.h: MQTT_TLS_MODE is MQTT_TLS_FINGERPRINT but MQTT_TLS_FINGERPRINT_SHA1 is not set"
#endif
#if MQTT_TLS_MODE == MQTT_TLS_INSECURE
#  warning "MQTT_TLS_INSECURE: the broker certificate is NOT verified. Use MQTT_TLS_CA or MQTT_TLS_FINGERPRINT outside the lab."
#endif
#ifndef MQTT_PORT
#  define MQTT_PORT ((MQTT_TLS_MODE) == MQTT_TLS_NONE ? 1883 : 8883)
#endif
#ifndef MQTT_USERNAME
#  define MQTT_USERNAME ""
#endif
#ifndef MQTT_PASSWORD
#  define MQTT_PASSWORD ""
#endif
#ifndef NTP_SERVER_1
#  define NTP_SERVER_1 "pool.ntp.org"
#endif
#ifndef NTP_SERVER_2
#  define NTP_SERVER_2 "time.nist.gov"
#endif
#ifndef MQTT_CLIENT_ID
#  define MQTT_CLIENT_ID ""
#endif
#ifndef TOPIC_PREFIX
#  define TOPIC_PREFIX "sensors/"
#endif
#ifndef PUBLISH_SPLIT_TOPICS
#  define PUBLISH_SPLIT_TOPICS 1
#endif
#ifndef PUBLISH_LEGACY_TOPIC
#  define PUBLISH_LEGACY_TOPIC 1
#endif
#ifndef LEGACY_TOPIC_PREFIX
#  define LEGACY_TOPIC_PREFIX "sensors_"
#endif
#ifndef LEGACY_TOPIC_SUFFIX
#  define LEGACY_TOPIC_SUFFIX "/dht"
#endif
#ifndef PUBLISH_STATUS
#  define PUBLISH_STATUS 1
#endif
#ifndef PUBLISH_INTERVAL_MS
#  define PUBLISH_INTERVAL_MS 30000
#endif
#ifndef PAYLOAD_DECIMALS
#  define PAYLOAD_DECIMALS 1
#endif
#ifndef TEMPERATURE_FAHRENHEIT
#  define TEMPERATURE_FAHRENHEIT 0
#endif
#ifndef PUBLISH_NAN
#  define PUBLISH_NAN 1
#endif
#ifndef DHT_PIN
#  define DHT_PIN 2  // D4 on NodeMCU / D1 mini / ESP-12E
#endif
#ifndef DHT_TYPE
#  define DHT_TYPE DHT22
#endif
#ifndef MQTT_KEEPALIVE_S
#  define MQTT_KEEPALIVE_S 15
#endif
#ifndef MQTT_SOCKET_TIMEOUT_S
#  define MQTT_SOCKET_TIMEOUT_S 5
#endif
#ifndef RECONNECT_MIN_MS
#  define RECONNECT_MIN_MS 1000
#endif
#ifndef RECONNECT_MAX_MS
#  define RECONNECT_MAX_MS 60000
#endif

#include <ESP8266WiFi.h>
#if MQTT_TLS_MODE != MQTT_TLS_NONE
#  include <WiFiClientSecure.h>
#endif
#include <PubSubClient.h>
#include <DHT.h>
#include <time.h>

#if !PUBLISH_SPLIT_TOPICS && !PUBLISH_LEGACY_TOPIC
#  error "config.h: PUBLISH_SPLIT_TOPICS and PUBLISH_LEGACY_TOPIC are both 0, nothing would be published"
#endif

// ---- topics (compile-time strings) ---------------------------------------------
static const char TOPIC_TEMPERATURE[] = TOPIC_PREFIX DEVICE_ID "/temperature";
static const char TOPIC_HUMIDITY[]    = TOPIC_PREFIX DEVICE_ID "/humidity";
static const char TOPIC_STATUS[]      = TOPIC_PREFIX DEVICE_ID "/status";
static const char TOPIC_LEGACY[]      = LEGACY_TOPIC_PREFIX DEVICE_ID LEGACY_TOPIC_SUFFIX;

static const char STATUS_ONLINE[]  = "online";
static const char STATUS_OFFLINE[] = "offline";

// Longest payload we ever publish: a reading ("-40.0", "nan") or "offline".
static const size_t MAX_PAYLOAD_LEN = 16;
// Keep the connection this long before the backoff goes back to RECONNECT_MIN_MS,
// so a broker that accepts and then drops us at once is not hammered every second.
static const unsigned long STABLE_CONNECTION_MS = 30000UL;
// While Wi-Fi stays down, call WiFi.begin() again this often (the SDK also
// retries by itself; this only unsticks it).
static const unsigned long WIFI_RETRY_MS = 60000UL;

// Compile-time checks of the configuration. Kept as members of a struct so the
// Arduino IDE and PlatformIO do not generate (wrong) prototypes for them.
struct ConfigCheck {
  static constexpr bool validLevel(const char* s) {
    return *s == '\0' ? true
                      : (*s != '/' && *s != '+' && *s != '#' && *s != ' ' && validLevel(s + 1));
  }
  static constexpr bool hasWildcard(const char* s) {
    return *s == '\0' ? false : (*s == '+' || *s == '#' || hasWildcard(s + 1));
  }
  static constexpr size_t maxOf(size_t a, size_t b) { return a > b ? a : b; }
};

static_assert(sizeof(DEVICE_ID) > 1, "config.h: DEVICE_ID must not be empty");
static_assert(ConfigCheck::validLevel(DEVICE_ID),
              "config.h: DEVICE_ID must not contain '/', '+', '#' or spaces (it is one topic level)");
static_assert(!ConfigCheck::hasWildcard(TOPIC_PREFIX) && !ConfigCheck::hasWildcard(LEGACY_TOPIC_PREFIX) &&
                  !ConfigCheck::hasWildcard(LEGACY_TOPIC_SUFFIX),
              "config.h: topic prefixes/suffixes must not contain MQTT wildcards '+' or '#'");
static_assert(PUBLISH_INTERVAL_MS >= 2000, "config.h: PUBLISH_INTERVAL_MS must be >= 2000 (DHT minimum sampling period)");
static_assert(PAYLOAD_DECIMALS >= 0 && PAYLOAD_DECIMALS <= 3, "config.h: PAYLOAD_DECIMALS must be 0..3");
static_assert(MQTT_KEEPALIVE_S >= 1 && MQTT_KEEPALIVE_S <= 65535, "config.h: MQTT_KEEPALIVE_S must be 1..65535");
static_assert(MQTT_SOCKET_TIMEOUT_S >= 1, "config.h: MQTT_SOCKET_TIMEOUT_S must be >= 1");
static_assert(RECONNECT_MIN_MS >= 100 && RECONNECT_MIN_MS <= RECONNECT_MAX_MS,
              "config.h: need 100 <= RECONNECT_MIN_MS <= RECONNECT_MAX_MS");

static const size_t MAX_TOPIC_LEN =
    ConfigCheck::maxOf(ConfigCheck::maxOf(sizeof(TOPIC_TEMPERATURE), sizeof(TOPIC_HUMIDITY)),
                       ConfigCheck::maxOf(sizeof(TOPIC_STATUS), sizeof(TOPIC_LEGACY))) - 1;
static_assert(MAX_TOPIC_LEN < 1024, "config.h: topics are unreasonably long for an ESP8266");

// Logging to the serial monitor (115200 baud); format strings stay in flash.
#define LOG(fmt, ...) Serial.printf_P(PSTR("[%8lu] " fmt "\n"), (unsigned long)millis(), ##__VA_ARGS__)

// ---- globals ---------------------------------------------------------------------
// (Each macro is #defined once only: PlatformIO's .ino converter reads all
// #if branches and would warn about alternative definitions.)
#if MQTT_TLS_MODE == MQTT_TLS_NONE
static WiFiClient net;
static const char TLS_LABEL[] = "plain TCP";
#else
static BearSSL::WiFiClientSecure net;
#  if MQTT_TLS_MODE == MQTT_TLS_CA
static BearSSL::X509List* caCert = nullptr;
static const char TLS_LABEL[] = "TLS, CA certificate";
#  elif MQTT_TLS_MODE == MQTT_TLS_FINGERPRINT
static const char TLS_LABEL[] = "TLS, SHA-1 fingerprint";
#  else
static const char TLS_LABEL[] = "TLS, NOT VERIFIED";
#  endif
#endif

static PubSubClient mqtt(net);
static DHT dht(DHT_PIN, DHT_TYPE);

static char clientId[sizeof(DEVICE_ID) + sizeof(MQTT_CLIENT_ID) + 8];
static const char* mqttUser = nullptr;  // nullptr = not sent
static const char* mqttPass = nullptr;

static bool wifiWasUp = false;
static unsigned long lastWifiBeginAt = 0;

static bool mqttWasUp = false;
static unsigned long mqttConnectedAt = 0;
static bool backoffIsReset = true;
static unsigned long backoffMs = RECONNECT_MIN_MS;  // next wait before jitter
static unsigned long retryFrom = 0;                 // start of the current wait
static unsigned long retryWaitMs = 0;               // 0 = try at once
static unsigned long lastWaitLogAt = 0;

static bool publishDue = false;
static unsigned long lastPublishAt = 0;
static unsigned long failedReads = 0;

// ---- helpers ---------------------------------------------------------------------
static const char* mqttStateName(int state) {
  switch (state) {
    case MQTT_CONNECTION_TIMEOUT:      return "connection timeout (no CONNACK / keep-alive expired)";
    case MQTT_CONNECTION_LOST:         return "connection lost";
    case MQTT_CONNECT_FAILED:          return "TCP/TLS connect failed";
    case MQTT_DISCONNECTED:            return "disconnected";
    case MQTT_CONNECTED:               return "connected";
    case MQTT_CONNECT_BAD_PROTOCOL:    return "refused: bad protocol version";
    case MQTT_CONNECT_BAD_CLIENT_ID:   return "refused: client id rejected";
    case MQTT_CONNECT_UNAVAILABLE:     return "refused: server unavailable";
    case MQTT_CONNECT_BAD_CREDENTIALS: return "refused: bad username or password";
    case MQTT_CONNECT_UNAUTHORIZED:    return "refused: not authorized";
    default:                           return "unknown";
  }
}

// Wait before the next connect attempt: backoffMs minus up to 25 % random
// jitter (so a fleet rebooting together does not reconnect in lockstep), then
// double backoffMs up to RECONNECT_MAX_MS.
static void scheduleRetry(unsigned long now) {
  retryWaitMs = backoffMs - (unsigned long)random((long)(backoffMs / 4) + 1);
  retryFrom = now;
  backoffMs = (backoffMs >= RECONNECT_MAX_MS / 2) ? RECONNECT_MAX_MS : backoffMs * 2;
  backoffIsReset = false;
  LOG("MQTT: next attempt in %lu ms", retryWaitMs);
}

static void retryNow(unsigned long now) {
  backoffMs = RECONNECT_MIN_MS;
  backoffIsReset = true;
  retryFrom = now;
  retryWaitMs = 0;
}

// A reading as a bare number ("25.5"), or "nan" when the sensor read failed.
static void formatReading(float value, char* out, size_t outLen) {
  if (isnan(value)) {
    snprintf(out, outLen, "nan");
    return;
  }
  char tmp[32];
  dtostrf(value, 1, PAYLOAD_DECIMALS, tmp);
  snprintf(out, outLen, "%s", tmp);
}

static bool publishValue(const char* topic, const char* payload, bool retained) {
  // PubSubClient publishes at QoS 0 only. publish() returns false when not
  // connected or when 7 + len(topic) + len(payload) exceeds its buffer; the
  // packet is then never sent (the broker sees nothing).
  bool ok = mqtt.publish(topic, payload, retained);
  if (ok) {
    LOG("MQTT: %s <- %s%s", topic, payload, retained ? " (retained)" : "");
  } else {
    LOG("MQTT: publish to %s failed (state %d, buffer %u bytes)", topic, mqtt.state(),
        (unsigned)mqtt.getBufferSize());
  }
  return ok;
}

static void readAndPublish() {
  // readHumidity() triggers the one-wire transfer; readTemperature() right after
  // reuses that sample (the library caches it for 2 s).
  const float humidity = dht.readHumidity();
  const float temperature = dht.readTemperature(TEMPERATURE_FAHRENHEIT != 0);

  char tBuf[MAX_PAYLOAD_LEN];
  char hBuf[MAX_PAYLOAD_LEN];
  formatReading(temperature, tBuf, sizeof(tBuf));
  formatReading(humidity, hBuf, sizeof(hBuf));

  const bool tOk = !isnan(temperature);
  const bool hOk = !isnan(humidity);
  if (tOk && hOk) {
    LOG("DHT: temperature=%s humidity=%s", tBuf, hBuf);
  } else {
    failedReads++;
    LOG("DHT: read failed (temperature=%s humidity=%s, %lu failures so far): check wiring, pull-up and DHT_TYPE",
        tBuf, hBuf, failedReads);
  }

#if PUBLISH_SPLIT_TOPICS
  if (tOk || PUBLISH_NAN) publishValue(TOPIC_TEMPERATURE, tBuf, false);
  if (hOk || PUBLISH_NAN) publishValue(TOPIC_HUMIDITY, hBuf, false);
#endif
#if PUBLISH_LEGACY_TOPIC
  if (tOk || PUBLISH_NAN) publishValue(TOPIC_LEGACY, tBuf, false);
#endif
}

// PubSubClient (2.8) refuses to build packets larger than its buffer (default
// MQTT_MAX_PACKET_SIZE = 256 bytes, 5 of which are reserved for the fixed
// header). Raise it with setBufferSize() only when this configuration needs it.
static void sizeMqttBuffer() {
  // CONNECT: 5 reserved + 10 (protocol name, level, flags, keep-alive)
  // + each string as 2-byte length + bytes.
  size_t connectNeed = 15 + 2 + strlen(clientId);
#if PUBLISH_STATUS
  connectNeed += 2 + (sizeof(TOPIC_STATUS) - 1) + 2 + (sizeof(STATUS_OFFLINE) - 1);
#endif
  if (mqttUser) connectNeed += 2 + strlen(mqttUser);
  if (mqttPass) connectNeed += 2 + strlen(mqttPass);
  // PUBLISH: 5 reserved + 2-byte topic length + topic + payload (QoS 0: no packet id).
  const size_t publishNeed = 5 + 2 + MAX_TOPIC_LEN + MAX_PAYLOAD_LEN;
  const size_t need = ConfigCheck::maxOf(connectNeed, publishNeed);

  if (need > mqtt.getBufferSize()) {
    if (need > 65535 || !mqtt.setBufferSize((uint16_t)need)) {
      LOG("MQTT: could not raise the packet buffer to %u bytes: connect/publish will fail", (unsigned)need);
    } else {
      LOG("MQTT: packet buffer raised to %u bytes", (unsigned)need);
    }
  }
}

// Only MQTT_TLS_CA needs the wall clock (certificate dates). Defined in every
// mode so the prototypes PlatformIO generates always have a definition.
static bool clockIsSet() {
#if MQTT_TLS_MODE == MQTT_TLS_CA
  return time(nullptr) > 1609459200;  // after 2021-01-01: NTP has answered
#else
  return true;
#endif
}

static void setupTls() {
#if MQTT_TLS_MODE == MQTT_TLS_CA
  caCert = new BearSSL::X509List(MQTT_CA_CERT);
  if (caCert->getCount() == 0) {
    LOG("TLS: MQTT_CA_CERT in config.h holds no valid PEM certificate: every connect will fail");
  }
  net.setTrustAnchors(caCert);
  // Certificate dates are checked against the clock, so get the time first.
  configTime(0, 0, NTP_SERVER_1, NTP_SERVER_2);
#elif MQTT_TLS_MODE == MQTT_TLS_FINGERPRINT
  if (!net.setFingerprint(MQTT_TLS_FINGERPRINT_SHA1)) {
    LOG("TLS: MQTT_TLS_FINGERPRINT_SHA1 is not 20 hex bytes: every connect will fail");
  }
#elif MQTT_TLS_MODE == MQTT_TLS_INSECURE
  net.setInsecure();
  LOG("TLS: WARNING, broker certificate is not verified (MQTT_TLS_INSECURE)");
#endif
}

static void logTlsError() {
#if MQTT_TLS_MODE != MQTT_TLS_NONE
  char err[112];
  const int code = net.getLastSSLError(err, sizeof(err));
  if (code != 0) {
    LOG("TLS: error %d: %s (free heap %u bytes)", code, err, (unsigned)ESP.getFreeHeap());
  }
#endif
}

static void startWifi(unsigned long now) {
  lastWifiBeginAt = now;
  WiFi.begin(WIFI_SSID, WIFI_PASSWORD);
}

// Returns true while Wi-Fi is up. Never blocks.
static bool serviceWifi(unsigned long now) {
  const bool up = WiFi.status() == WL_CONNECTED;
  if (up && !wifiWasUp) {
    LOG("Wi-Fi: connected to \"%s\", IP %s, RSSI %d dBm", WIFI_SSID, WiFi.localIP().toString().c_str(),
        (int)WiFi.RSSI());
    retryNow(now);  // fresh network: try the broker at once
  } else if (!up && wifiWasUp) {
    LOG("Wi-Fi: connection lost, the SDK is reconnecting");
    lastWifiBeginAt = now;
  } else if (!up && now - lastWifiBeginAt >= WIFI_RETRY_MS) {
    LOG("Wi-Fi: still not connected (status %d), calling WiFi.begin() again", (int)WiFi.status());
    startWifi(now);
  }
  wifiWasUp = up;
  return up;
}

static bool mqttConnect() {
#if MQTT_TLS_MODE == MQTT_TLS_CA
  net.setX509Time(time(nullptr));
#endif
  LOG("MQTT: connecting to %s:%u (%s) as \"%s\"%s", MQTT_HOST, (unsigned)MQTT_PORT, TLS_LABEL, clientId,
      mqttUser ? " with username" : "");

  // PubSubClient::connect() blocks for at most about 2 x MQTT_SOCKET_TIMEOUT_S
  // (TCP/TLS connect, then waiting for CONNACK); the ESP8266 core keeps the
  // Wi-Fi stack and watchdog served meanwhile.
#if PUBLISH_STATUS
  const bool ok = mqtt.connect(clientId, mqttUser, mqttPass, TOPIC_STATUS, 1 /* will QoS */, true /* will retain */,
                               STATUS_OFFLINE, true /* clean session */);
#else
  const bool ok = mqtt.connect(clientId, mqttUser, mqttPass, nullptr, 0, false, nullptr, true /* clean session */);
#endif
  if (!ok) {
    const int st = mqtt.state();
    LOG("MQTT: connect failed, state %d (%s)", st, mqttStateName(st));
    logTlsError();
    return false;
  }

  LOG("MQTT: connected (MQTT 3.1.1, keep-alive %us, clean session)", (unsigned)MQTT_KEEPALIVE_S);
#if PUBLISH_STATUS
  publishValue(TOPIC_STATUS, STATUS_ONLINE, true);
#endif
  return true;
}

static void serviceMqtt(unsigned long now) {
  if (mqtt.connected()) {
    mqtt.loop();  // keep-alive PINGREQ, incoming packets

    if (!backoffIsReset && now - mqttConnectedAt >= STABLE_CONNECTION_MS) {
      backoffMs = RECONNECT_MIN_MS;
      backoffIsReset = true;
    }
    if (publishDue || now - lastPublishAt >= (unsigned long)PUBLISH_INTERVAL_MS) {
      publishDue = false;
      lastPublishAt = now;
      readAndPublish();
    }
    return;
  }

  if (mqttWasUp) {
    mqttWasUp = false;
    const int st = mqtt.state();
    LOG("MQTT: connection lost, state %d (%s)", st, mqttStateName(st));
    scheduleRetry(now);
  }

  if (now - retryFrom < retryWaitMs) return;  // still backing off

  if (!clockIsSet()) {  // MQTT_TLS_CA: the certificate check needs the real date
    if (now - lastWaitLogAt >= 5000UL) {
      lastWaitLogAt = now;
      LOG("TLS: waiting for NTP time from %s before connecting", NTP_SERVER_1);
    }
    return;
  }

  if (mqttConnect()) {
    mqttWasUp = true;
    mqttConnectedAt = millis();
    publishDue = true;  // first reading right away, then every interval
  } else {
    scheduleRetry(millis());
  }
}

// ---- Arduino entry points ----------------------------------------------------------
void setup() {
  Serial.begin(115200);
  Serial.println();
  LOG("esp8266-dht starting: device \"%s\", DHT%d on GPIO%d, every %lu ms", DEVICE_ID, (int)DHT_TYPE, (int)DHT_PIN,
      (unsigned long)PUBLISH_INTERVAL_MS);

  if (sizeof(MQTT_CLIENT_ID) > 1) {
    snprintf(clientId, sizeof(clientId), "%s", MQTT_CLIENT_ID);
  } else {
    snprintf(clientId, sizeof(clientId), "%s-%06lx", DEVICE_ID, (unsigned long)(ESP.getChipId() & 0xFFFFFFUL));
  }
  if (strlen(clientId) > 23) {
    LOG("MQTT: client id \"%s\" is longer than 23 characters; strict MQTT 3.1.1 brokers may refuse it", clientId);
  }
  if (sizeof(MQTT_USERNAME) > 1) {
    mqttUser = MQTT_USERNAME;
    if (sizeof(MQTT_PASSWORD) > 1) mqttPass = MQTT_PASSWORD;
  } else if (sizeof(MQTT_PASSWORD) > 1) {
    LOG("MQTT: MQTT_PASSWORD is set without MQTT_USERNAME; MQTT 3.1.1 cannot send it, ignoring");
  }

#if PUBLISH_SPLIT_TOPICS
  LOG("topics: %s, %s", TOPIC_TEMPERATURE, TOPIC_HUMIDITY);
#endif
#if PUBLISH_LEGACY_TOPIC
  LOG("legacy topic: %s (temperature)", TOPIC_LEGACY);
#endif
#if PUBLISH_STATUS
  LOG("status topic: %s (retained, last will \"%s\")", TOPIC_STATUS, STATUS_OFFLINE);
#endif

  dht.begin();

  WiFi.persistent(false);  // do not rewrite the credentials to flash on every boot
  WiFi.mode(WIFI_STA);     // no soft-AP left over from another sketch
  if (sizeof(WIFI_HOSTNAME) > 1) WiFi.hostname(WIFI_HOSTNAME);
  WiFi.setAutoReconnect(true);
  startWifi(millis());
  LOG("Wi-Fi: connecting to \"%s\"", WIFI_SSID);

  setupTls();
  net.setTimeout(MQTT_SOCKET_TIMEOUT_S * 1000UL);  // TCP connect / read timeout

  mqtt.setServer(MQTT_HOST, MQTT_PORT);
  mqtt.setKeepAlive(MQTT_KEEPALIVE_S);
  mqtt.setSocketTimeout(MQTT_SOCKET_TIMEOUT_S);
  sizeMqttBuffer();
}

void loop() {
  const unsigned long now = millis();
  if (serviceWifi(now)) {
    serviceMqtt(now);
  }
  // No delay(): loop() returns at once and the core services Wi-Fi between calls.
}
