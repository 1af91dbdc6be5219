/* Runs the kernels of splitpipe/kernels/_cquant.c on the floats of a file and writes every output,
 * so that an x86-64 build and an aarch64 build (run under qemu) can be compared byte for byte
 * (tests/kernels/test_cquant_aarch64.py). The Python glue is compiled in but never called: the
 * binary is linked statically with its Python symbols left unresolved. */
#include "_cquant.c"
#include <stdio.h>
#include <stdlib.h>

int main(int argc, char **argv)
{
    FILE *f = fopen(argv[1], "rb");
    Py_ssize_t n;
    fread(&n, sizeof n, 1, f);
    float *x = malloc(4 * n);
    fread(x, 4, n, f);
    fclose(f);
    FILE *o = fopen(argv[2], "wb");
    uint8_t *codes = malloc(n), *back = malloc(n), *packed = malloc(n);
    float *y = malloc(4 * n);
    uint16_t *h = malloc(2 * n);
    int specs[4][3] = {{0, 255, 0}, {-128, 127, 1}, {0, 15, 0}, {0, 3, 0}};
    for (int k = 0; k < 4; k++) {
        int qmin = specs[k][0], qmax = specs[k][1], sym = specs[k][2];
        /* per tensor */
        Layout d = {1, 1, n};
        float lo, hi, scale;
        int zp;
        int bad = range_layout(x, d, &lo, &hi);
        fwrite(&bad, sizeof bad, 1, o);
        if (bad)
            continue;
        params(lo, hi, qmin, qmax, sym, &scale, &zp);
        quantize_layout(x, d, &scale, &zp, qmin, qmax, codes);
        dequantize_layout(codes, d, &scale, &zp, sym, y);
        fwrite(&scale, 4, 1, o);
        fwrite(&zp, sizeof zp, 1, o);
        fwrite(codes, 1, n, o);
        fwrite(y, 4, n, o);
        if (qmax < 255) {
            int bits = qmax == 15 ? 4 : 2;
            pack_run(codes, n, bits, packed);
            int pad = unpack_run(packed, n, bits, back);
            fwrite(packed, 1, (n * bits + 7) / 8, o);
            fwrite(back, 1, n, o);
            fwrite(&pad, sizeof pad, 1, o);
        }
        /* per channel: 16 channels of n / 16 */
        Py_ssize_t nch = 16, inner = n / 16;
        Layout dc = {1, nch, inner};
        float clo[16], chi[16], csc[16];
        int czp[16];
        range_layout(x, dc, clo, chi);
        params_channels(clo, chi, nch, qmin, qmax, sym, csc, czp);
        quantize_layout(x, dc, csc, czp, qmin, qmax, codes);
        dequantize_layout(codes, dc, csc, czp, sym, y);
        fwrite(csc, 4, 16, o);
        fwrite(czp, sizeof(int), 16, o);
        fwrite(codes, 1, nch * inner, o);
        fwrite(y, 4, nch * inner, o);
    }
    to_f16_run(x, h, n);
    from_f16_run(h, y, n);
    fwrite(h, 2, n, o);
    fwrite(y, 4, n, o);
    fclose(o);
    return 0;
}
