#ifndef VLM_JPEG_H
#define VLM_JPEG_H

#include <stddef.h>
#include <stdio.h>
#include <jpeglib.h>
#include <jerror.h>

/* One JPEG decode through libjpeg, with libjpeg's fatal errors caught (setjmp/longjmp) and
   reported instead of exiting, and its warnings recorded instead of printed.
   Calls return 0 on success, else the libjpeg message code (J_MESSAGE_CODE) of the error,
   whose text is vlm_jpeg_message(). */
typedef struct VLMJPEGDecoder VLMJPEGDecoder;

typedef struct {
    unsigned width, height; /* from the frame header; set even when the header is refused */
    int components;         /* 1 gray, 3 YCbCr or RGB, 4 CMYK or YCCK */
} VLMJPEGHeader;

/* `bytes` must stay valid until vlm_jpeg_destroy. NULL when out of memory. */
VLMJPEGDecoder *vlm_jpeg_create(const unsigned char *bytes, size_t count);
void vlm_jpeg_destroy(VLMJPEGDecoder *decoder);

/* Reads the markers up to the first scan, keeping APP1 segments (EXIF, XMP). */
int vlm_jpeg_read_header(VLMJPEGDecoder *decoder, VLMJPEGHeader *header);
/* The payload of the n-th APP1 segment, NULL past the last. */
const unsigned char *vlm_jpeg_app1(const VLMJPEGDecoder *decoder, int n, unsigned *length);

/* Decodes into `pixels`: width * height * components bytes, rows top to bottom, components
   as stored (gray, RGB or CMYK). JERR_BUFFER_SIZE when `capacity` is smaller. */
int vlm_jpeg_decode(VLMJPEGDecoder *decoder, unsigned char *pixels, size_t capacity);

/* Whether libjpeg ran out of data (and padded the image with gray) at any point. */
int vlm_jpeg_truncated(const VLMJPEGDecoder *decoder);
const char *vlm_jpeg_message(const VLMJPEGDecoder *decoder);
/* The error message's first numeric parameter (a bit depth, a table index...). */
int vlm_jpeg_message_parameter(const VLMJPEGDecoder *decoder);

#endif
