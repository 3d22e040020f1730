#include "vlm_jpeg.h"
#include <setjmp.h>
#include <stdlib.h>

struct VLMJPEGDecoder {
    struct jpeg_decompress_struct cinfo; /* first, so libjpeg's pointer is also ours */
    struct jpeg_error_mgr errors;
    jmp_buf escape;
    const unsigned char *bytes;
    size_t count;
    int created, truncated, code, parameter;
    char message[JMSG_LENGTH_MAX];
};

/* libjpeg must not continue after a fatal error: record it and jump back to the API call. */
static void error_exit(j_common_ptr cinfo) {
    VLMJPEGDecoder *d = (VLMJPEGDecoder *)cinfo;
    d->code = cinfo->err->msg_code;
    d->parameter = cinfo->err->msg_parm.i[0];
    cinfo->err->format_message(cinfo, d->message);
    longjmp(d->escape, 1);
}

/* Warnings (corrupt entropy data) are tolerated as PIL tolerates them; running out of data is
   remembered so the caller can refuse a truncated file. Nothing is printed. */
static void emit_message(j_common_ptr cinfo, int level) {
    if (level < 0 && cinfo->err->msg_code == JWRN_JPEG_EOF) ((VLMJPEGDecoder *)cinfo)->truncated = 1;
}

VLMJPEGDecoder *vlm_jpeg_create(const unsigned char *bytes, size_t count) {
    VLMJPEGDecoder *d = calloc(1, sizeof *d);
    if (!d) return NULL;
    d->bytes = bytes;
    d->count = count;
    d->cinfo.err = jpeg_std_error(&d->errors);
    d->errors.error_exit = error_exit;
    d->errors.emit_message = emit_message;
    return d;
}

void vlm_jpeg_destroy(VLMJPEGDecoder *d) {
    if (d->created) jpeg_destroy_decompress(&d->cinfo);
    free(d);
}

int vlm_jpeg_read_header(VLMJPEGDecoder *d, VLMJPEGHeader *header) {
    if (setjmp(d->escape)) {
        header->width = d->cinfo.image_width;
        header->height = d->cinfo.image_height;
        header->components = d->cinfo.num_components;
        return d->code;
    }
    jpeg_create_decompress(&d->cinfo);
    d->created = 1;
    jpeg_mem_src(&d->cinfo, d->bytes, (unsigned long)d->count);
    jpeg_save_markers(&d->cinfo, JPEG_APP0 + 1, 0xFFFF);
    jpeg_read_header(&d->cinfo, TRUE);
    header->width = d->cinfo.image_width;
    header->height = d->cinfo.image_height;
    header->components = d->cinfo.num_components;
    return 0;
}

const unsigned char *vlm_jpeg_app1(const VLMJPEGDecoder *d, int n, unsigned *length) {
    for (jpeg_saved_marker_ptr m = d->cinfo.marker_list; m; m = m->next) {
        if (m->marker == JPEG_APP0 + 1 && n-- == 0) {
            *length = m->data_length;
            return m->data;
        }
    }
    return NULL;
}

int vlm_jpeg_decode(VLMJPEGDecoder *d, unsigned char *pixels, size_t capacity) {
    if (setjmp(d->escape)) return d->code;
    switch (d->cinfo.num_components) {
    case 1: d->cinfo.out_color_space = JCS_GRAYSCALE; break;
    case 3: d->cinfo.out_color_space = JCS_RGB; break;
    default: d->cinfo.out_color_space = JCS_CMYK; /* libjpeg converts YCCK to CMYK */
    }
    jpeg_start_decompress(&d->cinfo);
    size_t stride = (size_t)d->cinfo.output_width * d->cinfo.output_components;
    if (stride * d->cinfo.output_height > capacity) ERREXIT(&d->cinfo, JERR_BUFFER_SIZE);
    while (d->cinfo.output_scanline < d->cinfo.output_height) {
        JSAMPROW row = pixels + stride * d->cinfo.output_scanline;
        jpeg_read_scanlines(&d->cinfo, &row, 1);
    }
    /* Reads on to EOI, so a file missing its end is noticed as truncated. */
    jpeg_finish_decompress(&d->cinfo);
    return 0;
}

int vlm_jpeg_truncated(const VLMJPEGDecoder *d) { return d->truncated; }
const char *vlm_jpeg_message(const VLMJPEGDecoder *d) { return d->message; }
int vlm_jpeg_message_parameter(const VLMJPEGDecoder *d) { return d->parameter; }
