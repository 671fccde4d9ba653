/* Test driver for firmware_bridge/c: encodes and parses frames on stdin/stdout so the
 * Python tests can round-trip between the C reference and the Python decoder. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "qlung_link.h"

static size_t read_all(unsigned char **data) {
    size_t size = 0, cap = 1 << 16, n;
    *data = malloc(cap);
    while ((n = fread(*data + size, 1, cap - size, stdin)) > 0) {
        size += n;
        if (size == cap) *data = realloc(*data, cap *= 2);
    }
    return size;
}

int main(int argc, char **argv) {
    unsigned char *in, out[QLINK_MAX_FRAME];
    size_t n = read_all(&in), i, written;
    if (argc >= 2 && strcmp(argv[1], "crc") == 0) {
        printf("%04x\n", qlink_crc16(0xFFFFu, in, n));
        return 0;
    }
    if (argc == 6 && (strcmp(argv[1], "encode16") == 0 || strcmp(argv[1], "encode24") == 0)) {
        /* encodeXX FIRST_SEQUENCE RATE CHANNELS FRAMES_PER_PACKET; samples as int16 / int32 little-endian */
        int is16 = argv[1][6] == '1';
        unsigned seq = (unsigned)atoi(argv[2]), rate = (unsigned)atoi(argv[3]);
        unsigned channels = (unsigned)atoi(argv[4]), per = (unsigned)atoi(argv[5]);
        size_t width = is16 ? 2 : 4, total = n / width / channels, done = 0;
        while (done < total) {
            size_t frames = total - done < per ? total - done : per;
            uint32_t stamp = (uint32_t)((unsigned long long)done * 1000000ull / rate);
            if (is16) {
                written = qlink_encode_audio_i16((uint16_t)seq, stamp, rate, (uint8_t)channels,
                                                 (const int16_t *)(in + done * channels * 2), frames, out, sizeof out);
            } else {
                written = qlink_encode_audio_i24((uint16_t)seq, stamp, rate, (uint8_t)channels,
                                                 (const int32_t *)(in + done * channels * 4), frames, out, sizeof out);
            }
            if (written == 0) return 3;
            fwrite(out, 1, written, stdout);
            done += frames;
            seq++;
        }
        return 0;
    }
    if (argc == 5 && strcmp(argv[1], "reply") == 0) {
        written = qlink_encode_reply((uint16_t)atoi(argv[2]), (uint8_t)atoi(argv[3]), (uint8_t)atoi(argv[4]), in, n,
                                     out, sizeof out);
        if (written == 0) return 3;
        fwrite(out, 1, written, stdout);
        return 0;
    }
    if (argc == 2 && strcmp(argv[1], "parse") == 0) {
        static qlink_parser parser;
        qlink_parser_init(&parser);
        for (i = 0; i < n; i++) {
            if (qlink_parser_feed(&parser, in[i])) {
                size_t k;
                printf("%u %u %u ", parser.header.type, parser.header.sequence, parser.header.length);
                for (k = 0; k < parser.header.length; k++) printf("%02x", parser.payload[k]);
                printf("\n");
            }
        }
        printf("crc_errors %u\n", (unsigned)parser.crc_errors);
        return 0;
    }
    fprintf(stderr, "usage: link_tool crc | encode16|encode24 SEQ RATE CH PER | reply SEQ CMD STATUS | parse\n");
    return 2;
}
