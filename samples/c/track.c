/*
 * track.c - track the objects of a first-frame mask through a folder of frames, with the
 * diffvos C API.
 *
 *   track BUNDLE FRAMES_DIR MASK.pgm OUT_DIR [--rgb]
 *
 * FRAMES_DIR holds binary PPM frames (P6, 8-bit), taken in name order. MASK.pgm is a binary
 * PGM (P5, 8-bit) label map of the first frame: 0 = background, any other value an object id.
 * For each frame, OUT_DIR/<name>.pgm receives the label map (the mask's ids). Prints the
 * provider, then one line per frame with the API's total time. Exit status 0 on success, 1 on
 * an error (the API's message is printed).
 *
 * Build (after `python -m diffvos.runtime.capi.build --out build/capi`):
 *   cc -std=c99 -O2 samples/c/track.c -Ibuild/capi -Lbuild/capi -ldiffvos \
 *      -Wl,-rpath,$PWD/build/capi -o build/capi/track
 */
#define _POSIX_C_SOURCE 200809L
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "diffvos.h"

/* Read a binary PNM (P5 grey or P6 colour, maxval 255) into a new buffer. */
static unsigned char *read_pnm(const char *path, const char *magic, int *w, int *h)
{
    FILE *f = fopen(path, "rb");
    char m[3] = {0};
    int maxval = 0, channels = strcmp(magic, "P6") == 0 ? 3 : 1;
    unsigned char *data = NULL;
    if (!f) {
        fprintf(stderr, "track: cannot open %s\n", path);
        return NULL;
    }
    if (fscanf(f, "%2s %d %d %d", m, w, h, &maxval) != 4 || strcmp(m, magic) != 0 || maxval != 255 ||
        fgetc(f) == EOF || *w <= 0 || *h <= 0) {
        fprintf(stderr, "track: %s is not an 8-bit binary %s file\n", path, magic);
        fclose(f);
        return NULL;
    }
    data = malloc((size_t)*w * (size_t)*h * channels);
    if (data && fread(data, (size_t)channels, (size_t)*w * (size_t)*h, f) != (size_t)*w * (size_t)*h) {
        fprintf(stderr, "track: %s is truncated\n", path);
        free(data);
        data = NULL;
    }
    fclose(f);
    return data;
}

static int write_pgm(const char *path, const unsigned char *data, int w, int h)
{
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "track: cannot write %s\n", path);
        return -1;
    }
    fprintf(f, "P5\n%d %d\n255\n", w, h);
    fwrite(data, 1, (size_t)w * (size_t)h, f);
    return fclose(f);
}

static int by_name(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

/* The .ppm names of a folder, sorted; returns the count (0 on error). */
static size_t list_frames(const char *dir, char ***names)
{
    DIR *d = opendir(dir);
    struct dirent *e;
    size_t n = 0, cap = 64;
    if (!d) {
        fprintf(stderr, "track: cannot open the folder %s\n", dir);
        return 0;
    }
    *names = malloc(cap * sizeof **names);
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (len < 5 || strcmp(e->d_name + len - 4, ".ppm") != 0) continue;
        if (n == cap) *names = realloc(*names, (cap *= 2) * sizeof **names);
        (*names)[n++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(*names, n, sizeof **names, by_name);
    return n;
}

/* Print the failing call's message and return 1. */
static int fail(const char *call, diffvos_status status)
{
    fprintf(stderr, "track: %s failed: %s (%s)\n", call, diffvos_status_string(status), diffvos_last_error());
    return 1;
}

int main(int argc, char **argv)
{
    diffvos_runtime *runtime = NULL;
    diffvos_session *session = NULL;
    diffvos_runtime_options ropt;
    diffvos_session_options sopt;
    diffvos_timings timings;
    diffvos_status st;
    const char *provider = NULL;
    char **names = NULL, path[4096];
    unsigned char *mask, *frame, *labels;
    int w, h, fw, fh, rc = 1;
    size_t n, i;

    if (argc < 5) {
        fprintf(stderr, "usage: %s BUNDLE FRAMES_DIR MASK.pgm OUT_DIR [--rgb]\n", argv[0]);
        return 2;
    }
    if ((mask = read_pnm(argv[3], "P5", &w, &h)) == NULL) return 1;
    if ((n = list_frames(argv[2], &names)) == 0) {
        fprintf(stderr, "track: no .ppm frames in %s\n", argv[2]);
        return 1;
    }
    labels = malloc((size_t)w * (size_t)h);

    diffvos_runtime_options_init(&ropt);
    ropt.backend = "auto";
    if ((st = diffvos_runtime_create(argv[1], &ropt, &runtime)) != DIFFVOS_OK) return fail("diffvos_runtime_create", st);
    if (diffvos_runtime_provider(runtime, &provider) == DIFFVOS_OK) printf("diffvos %s on %s\n", diffvos_version(), provider);

    diffvos_session_options_init(&sopt);
    sopt.color = (argc > 5 && strcmp(argv[5], "--rgb") == 0) ? DIFFVOS_COLOR_RGB : DIFFVOS_COLOR_BGR;
    if ((st = diffvos_session_create(runtime, w, h, &sopt, &session)) != DIFFVOS_OK) {
        rc = fail("diffvos_session_create", st);
        goto done;
    }
    for (i = 0; i < n; i++) {
        snprintf(path, sizeof path, "%s/%s", argv[2], names[i]);
        if ((frame = read_pnm(path, "P6", &fw, &fh)) == NULL) goto done;
        if (fw != w || fh != h) {
            fprintf(stderr, "track: %s is %dx%d, the mask is %dx%d\n", path, fw, fh, w, h);
            free(frame);
            goto done;
        }
        /* PPM stores RGB; the session was declared BGR unless --rgb, so swap here if needed */
        if (sopt.color == DIFFVOS_COLOR_BGR) {
            size_t p;
            for (p = 0; p < (size_t)w * (size_t)h; p++) {
                unsigned char t = frame[3 * p];
                frame[3 * p] = frame[3 * p + 2];
                frame[3 * p + 2] = t;
            }
        }
        if (i == 0)
            st = diffvos_session_add_objects(session, frame, (size_t)w * h * 3, mask, (size_t)w * h, labels,
                                             (size_t)w * h);
        else
            st = diffvos_session_track(session, frame, (size_t)w * h * 3, labels, (size_t)w * h, NULL, 0);
        free(frame);
        if (st != DIFFVOS_OK) {
            rc = fail(i == 0 ? "diffvos_session_add_objects" : "diffvos_session_track", st);
            goto done;
        }
        names[i][strlen(names[i]) - 4] = '\0';
        snprintf(path, sizeof path, "%s/%s.pgm", argv[4], names[i]);
        if (write_pgm(path, labels, w, h) != 0) goto done;
        diffvos_session_timings(session, &timings);
        printf("%s %.2f ms\n", names[i], timings.total_ms);
    }
    rc = 0;
done:
    if (session) diffvos_session_destroy(session);
    if (runtime) diffvos_runtime_destroy(runtime);
    for (i = 0; i < n; i++) free(names[i]);
    free(names);
    free(mask);
    free(labels);
    return rc;
}
