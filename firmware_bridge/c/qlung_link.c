/* qlung_link.c - reference encoder and command parser for the qlung-edge link (C99). */
#include "qlung_link.h"

#include <string.h>

uint16_t qlink_crc16(uint16_t crc, const uint8_t *data, size_t n) {
    size_t i;
    int bit;
    for (i = 0; i < n; i++) {
        crc ^= (uint16_t)((uint16_t)data[i] << 8);
        for (bit = 0; bit < 8; bit++) {
            crc = (crc & 0x8000u) ? (uint16_t)((crc << 1) ^ 0x1021u) : (uint16_t)(crc << 1);
        }
    }
    return crc;
}

size_t qlink_sample_width(uint8_t format) {
    switch (format) {
    case QLINK_INT16: return 2;
    case QLINK_INT24: return 3;
    case QLINK_FLOAT32: return 4;
    default: return 0;
    }
}

static void put16(uint8_t *p, uint16_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)(v >> 8);
}

static void put32(uint8_t *p, uint32_t v) {
    p[0] = (uint8_t)(v & 0xFFu);
    p[1] = (uint8_t)((v >> 8) & 0xFFu);
    p[2] = (uint8_t)((v >> 16) & 0xFFu);
    p[3] = (uint8_t)(v >> 24);
}

static uint16_t get16(const uint8_t *p) { return (uint16_t)(p[0] | (p[1] << 8)); }

static uint32_t get32(const uint8_t *p) {
    return (uint32_t)p[0] | ((uint32_t)p[1] << 8) | ((uint32_t)p[2] << 16) | ((uint32_t)p[3] << 24);
}

static void write_header(const qlink_header *h, uint8_t *out) {
    out[0] = QLINK_SYNC0;
    out[1] = QLINK_SYNC1;
    out[2] = QLINK_VERSION;
    out[3] = h->type;
    put16(out + 4, h->sequence);
    put32(out + 6, h->timestamp_us);
    put32(out + 10, h->sample_rate);
    out[14] = h->format;
    out[15] = h->channels;
    put16(out + 16, h->length);
}

size_t qlink_encode(const qlink_header *header, const uint8_t *payload, uint8_t *out, size_t out_size) {
    size_t total = QLINK_HEADER_SIZE + (size_t)header->length + QLINK_CRC_SIZE;
    uint16_t crc;
    if (header->length > QLINK_MAX_PAYLOAD || out_size < total) return 0;
    if (header->type == QLINK_AUDIO) {
        size_t width = qlink_sample_width(header->format);
        if (width == 0 || header->channels == 0 || header->channels > QLINK_MAX_CHANNELS) return 0;
        if (header->length % (width * header->channels) != 0) return 0;
    }
    write_header(header, out);
    if (header->length > 0) memcpy(out + QLINK_HEADER_SIZE, payload, header->length);
    crc = qlink_crc16(0xFFFFu, out + 2, QLINK_HEADER_SIZE - 2 + (size_t)header->length);
    put16(out + QLINK_HEADER_SIZE + header->length, crc);
    return total;
}

/* Fills an audio header; 0 when the samples do not fit in one frame. */
static int audio_header(qlink_header *h, uint16_t sequence, uint32_t timestamp_us, uint32_t sample_rate,
                        uint8_t channels, uint8_t format, size_t frames) {
    size_t length = frames * channels * qlink_sample_width(format);
    memset(h, 0, sizeof *h);
    if (length > QLINK_MAX_PAYLOAD) return 0;
    h->type = QLINK_AUDIO;
    h->sequence = sequence;
    h->timestamp_us = timestamp_us;
    h->sample_rate = sample_rate;
    h->format = format;
    h->channels = channels;
    h->length = (uint16_t)length;
    return 1;
}

size_t qlink_encode_audio_i16(uint16_t sequence, uint32_t timestamp_us, uint32_t sample_rate, uint8_t channels,
                              const int16_t *samples, size_t frames, uint8_t *out, size_t out_size) {
    qlink_header h;
    size_t i, n = frames * channels;
    if (!audio_header(&h, sequence, timestamp_us, sample_rate, channels, QLINK_INT16, frames)) return 0;
    if (out_size < QLINK_HEADER_SIZE + h.length + QLINK_CRC_SIZE) return 0;
    /* Samples go straight into the frame: no second buffer on a small MCU. */
    for (i = 0; i < n; i++) put16(out + QLINK_HEADER_SIZE + 2 * i, (uint16_t)samples[i]);
    return qlink_encode(&h, out + QLINK_HEADER_SIZE, out, out_size);
}

size_t qlink_encode_audio_i24(uint16_t sequence, uint32_t timestamp_us, uint32_t sample_rate, uint8_t channels,
                              const int32_t *samples, size_t frames, uint8_t *out, size_t out_size) {
    qlink_header h;
    size_t i, n = frames * channels;
    if (!audio_header(&h, sequence, timestamp_us, sample_rate, channels, QLINK_INT24, frames)) return 0;
    if (out_size < QLINK_HEADER_SIZE + h.length + QLINK_CRC_SIZE) return 0;
    for (i = 0; i < n; i++) {
        uint32_t v = (uint32_t)samples[i];
        uint8_t *p = out + QLINK_HEADER_SIZE + 3 * i;
        p[0] = (uint8_t)(v & 0xFFu);
        p[1] = (uint8_t)((v >> 8) & 0xFFu);
        p[2] = (uint8_t)((v >> 16) & 0xFFu);
    }
    return qlink_encode(&h, out + QLINK_HEADER_SIZE, out, out_size);
}

size_t qlink_encode_reply(uint16_t sequence, uint8_t command, uint8_t status, const uint8_t *data, size_t n,
                          uint8_t *out, size_t out_size) {
    qlink_header h;
    if (n + 2 > QLINK_MAX_PAYLOAD || out_size < QLINK_HEADER_SIZE + n + 2 + QLINK_CRC_SIZE) return 0;
    memset(&h, 0, sizeof h);
    h.type = QLINK_REPLY;
    h.sequence = sequence;
    h.length = (uint16_t)(n + 2);
    out[QLINK_HEADER_SIZE] = command;
    out[QLINK_HEADER_SIZE + 1] = status;
    if (n > 0) memmove(out + QLINK_HEADER_SIZE + 2, data, n);
    return qlink_encode(&h, out + QLINK_HEADER_SIZE, out, out_size);
}

void qlink_parser_init(qlink_parser *parser) {
    memset(parser, 0, sizeof *parser);
}

/* Drop the first byte of what is buffered and look for the next sync in the rest. */
static void resync(qlink_parser *p) {
    size_t i;
    for (i = 1; i < p->have; i++) {
        if (p->buf[i] == QLINK_SYNC0 && (i + 1 == p->have || p->buf[i + 1] == QLINK_SYNC1)) break;
    }
    memmove(p->buf, p->buf + i, p->have - i);
    p->have -= i;
}

int qlink_parser_feed(qlink_parser *p, uint8_t byte) {
    if (p->have == 0 && byte != QLINK_SYNC0) return 0;
    if (p->have == 1 && byte != QLINK_SYNC1) {
        p->have = 0;
        if (byte == QLINK_SYNC0) p->buf[p->have++] = byte;
        return 0;
    }
    p->buf[p->have++] = byte;
    while (p->have >= QLINK_HEADER_SIZE) {
        uint16_t length = get16(p->buf + 16);
        size_t total = QLINK_HEADER_SIZE + (size_t)length + QLINK_CRC_SIZE;
        if (p->buf[2] != QLINK_VERSION || length > QLINK_MAX_PAYLOAD) {
            resync(p);
            continue;
        }
        if (p->have < total) return 0;
        if (qlink_crc16(0xFFFFu, p->buf + 2, total - 4) != get16(p->buf + total - 2)) {
            p->crc_errors++;
            resync(p);
            continue;
        }
        p->header.type = p->buf[3];
        p->header.sequence = get16(p->buf + 4);
        p->header.timestamp_us = get32(p->buf + 6);
        p->header.sample_rate = get32(p->buf + 10);
        p->header.format = p->buf[14];
        p->header.channels = p->buf[15];
        p->header.length = length;
        p->payload = p->buf + QLINK_HEADER_SIZE;
        p->have = 0; /* the payload stays readable until the next byte is fed */
        return 1;
    }
    return 0;
}
