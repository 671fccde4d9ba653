/*
 * qlung_link.h - the qlung-edge stethoscope link protocol, for firmware (C99, no dependencies).
 *
 * Frame (little-endian), see ../PROTOCOL.md:
 *   0  sync        2  0xA5 0x5A
 *   2  version     1  1
 *   3  type        1  1 audio, 2 command (host -> device), 3 reply (device -> host)
 *   4  sequence    2  audio: +1 per frame, wraps; command: chosen by host; reply: the command's
 *   6  timestamp   4  device clock of the first sample, microseconds, wraps
 *  10  sample_rate 4  Hz (audio), 0 otherwise
 *  14  format      1  1 int16, 2 int24 (3 bytes), 3 float32 (audio), 0 otherwise
 *  15  channels    1  1..8 (audio), 0 otherwise; samples interleaved
 *  16  length      2  payload bytes, at most QLINK_MAX_PAYLOAD
 *  18  payload     length
 *  18+length crc   2  CRC-16/CCITT-FALSE over bytes 2 .. 18+length-1 (everything but sync and crc)
 */
#ifndef QLUNG_LINK_H
#define QLUNG_LINK_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define QLINK_SYNC0 0xA5u
#define QLINK_SYNC1 0x5Au
#define QLINK_VERSION 1u
#define QLINK_HEADER_SIZE 18u
#define QLINK_CRC_SIZE 2u
#define QLINK_MAX_PAYLOAD 4096u
#define QLINK_MAX_FRAME (QLINK_HEADER_SIZE + QLINK_MAX_PAYLOAD + QLINK_CRC_SIZE)
#define QLINK_MAX_CHANNELS 8u

enum qlink_type { QLINK_AUDIO = 1, QLINK_COMMAND = 2, QLINK_REPLY = 3 };
enum qlink_format { QLINK_INT16 = 1, QLINK_INT24 = 2, QLINK_FLOAT32 = 3 };
enum qlink_command { QLINK_START = 1, QLINK_STOP = 2, QLINK_SET_GAIN = 3, QLINK_QUERY_INFO = 4 };
enum qlink_status { QLINK_OK = 0, QLINK_UNKNOWN_COMMAND = 1, QLINK_BAD_ARGUMENT = 2, QLINK_BUSY = 3 };

typedef struct {
    uint8_t type;
    uint16_t sequence;
    uint32_t timestamp_us;
    uint32_t sample_rate;
    uint8_t format;
    uint8_t channels;
    uint16_t length;
} qlink_header;

/* CRC-16/CCITT-FALSE (poly 0x1021, init 0xFFFF); pass 0xFFFF to start, the result to continue. */
uint16_t qlink_crc16(uint16_t crc, const uint8_t *data, size_t n);

/* Bytes per sample of a format; 0 for an unknown one. */
size_t qlink_sample_width(uint8_t format);

/* Writes one frame into out (capacity out_size). Returns the frame's size, or 0 when the
 * payload is too long, out is too small or an audio header is inconsistent. */
size_t qlink_encode(const qlink_header *header, const uint8_t *payload, uint8_t *out, size_t out_size);

/* An audio frame from interleaved int16 samples (frames * channels values). */
size_t qlink_encode_audio_i16(uint16_t sequence, uint32_t timestamp_us, uint32_t sample_rate, uint8_t channels,
                              const int16_t *samples, size_t frames, uint8_t *out, size_t out_size);

/* An audio frame from interleaved 24-bit samples held in int32 (low 24 bits are sent). */
size_t qlink_encode_audio_i24(uint16_t sequence, uint32_t timestamp_us, uint32_t sample_rate, uint8_t channels,
                              const int32_t *samples, size_t frames, uint8_t *out, size_t out_size);

/* A reply to command `command` (sequence echoes the command's) with status and optional data. */
size_t qlink_encode_reply(uint16_t sequence, uint8_t command, uint8_t status, const uint8_t *data, size_t n,
                          uint8_t *out, size_t out_size);

/* Byte-at-a-time parser for what the host sends (commands): feed every received byte;
 * returns 1 when a frame with a valid CRC is complete (header and payload then hold it). */
typedef struct {
    uint8_t buf[QLINK_MAX_FRAME];
    size_t have;
    qlink_header header;
    const uint8_t *payload;
    uint32_t crc_errors;
} qlink_parser;

void qlink_parser_init(qlink_parser *parser);
int qlink_parser_feed(qlink_parser *parser, uint8_t byte);

#ifdef __cplusplus
}
#endif
#endif /* QLUNG_LINK_H */
