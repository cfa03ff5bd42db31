/*
 * diffvos.h - C API of the diffvos video object tracker (C99).
 *
 * Build the library with one command (see runtime/capi/build.py):
 *     python -m diffvos.runtime.capi.build --out build/capi
 * which writes build/capi/libdiffvos.so and a copy of this header. Link with
 *     cc app.c -Ibuild/capi -Lbuild/capi -ldiffvos -Wl,-rpath,$PWD/build/capi
 * The library embeds the Python runtime of the environment it was built in (the one holding
 * diffvos, numpy and ONNX Runtime); DIFFVOS_PYTHONPATH (extra sys.path entries, ':'-separated)
 * and DIFFVOS_PYTHONHOME override what was recorded at build time.
 *
 * OBJECTS AND LIFETIMES
 *   diffvos_runtime  one loaded bundle: its engines (ONNX Runtime sessions or TensorRT plans).
 *   diffvos_session  one video stream's tracking state. Many sessions share one runtime.
 *   Every create has a matching destroy. Destroying a runtime while sessions of it live is
 *   allowed: the sessions keep the engine alive until they are destroyed. A destroyed handle
 *   is never reused: using it again returns DIFFVOS_ERR_INVALID_HANDLE, it does not crash.
 *
 * OWNERSHIP
 *   Frames, masks and output buffers belong to the caller; the library reads or writes them
 *   only during the call and keeps no pointer to them. Strings returned through `const char*`
 *   belong to the library: a handle's strings stay valid until the handle is destroyed (a
 *   last-error string until the next call on that handle); diffvos_last_error()'s string
 *   until the calling thread's next call; static strings forever.
 *
 * BUFFERS (row-major, packed, no padding)
 *   frame     uint8  height*width*3, BGR or RGB as declared in diffvos_session_options.color
 *   labels    uint8  height*width: 0 = background, otherwise the caller's object id (1..255)
 *   probs     float  channels*grid_h*grid_w (diffvos_session_prob_shape): the soft mask on the
 *                    feature grid; channel 0 is background, channel i the i-th id listed by
 *                    diffvos_session_object_ids.
 *   Sizes are passed in bytes (floats: in elements) and checked; a wrong one gives
 *   DIFFVOS_ERR_BUFFER and writes nothing.
 *
 * THREADING
 *   All functions may be called from any thread. Distinct sessions run concurrently on
 *   distinct threads (ONNX Runtime releases the GIL while it computes). One session used by
 *   two threads at once is serialised (default) or, with DIFFVOS_CONCURRENCY_REFUSE, the
 *   second call returns DIFFVOS_ERR_BUSY; its state is never corrupted.
 *
 * ERRORS
 *   Every function returning diffvos_status returns DIFFVOS_OK (0) or an error status, never
 *   aborts the process. The message of the last failure is available from the handle
 *   (diffvos_runtime_last_error / diffvos_session_last_error) and, for every failure including
 *   null or invalid handles, from diffvos_last_error() on the calling thread. Every call that
 *   returns diffvos_status sets both: the failure's message, or "" when it returns DIFFVOS_OK
 *   (a success clears them, so a message read after a successful call never describes an
 *   older failure). A failing call has no side effect: nothing is written to an output buffer
 *   and the session is as before the call.
 */
#ifndef DIFFVOS_H
#define DIFFVOS_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* 2: diffvos_runtime_options gained allow_failed_calibration */
#define DIFFVOS_API_VERSION 2

#ifndef DIFFVOS_API
#if defined(__GNUC__)
#define DIFFVOS_API __attribute__((visibility("default")))
#else
#define DIFFVOS_API
#endif
#endif

/* CFFI-BEGIN (the build script reads the declarations between these markers) */

/* Status codes: stable numeric values (diffvos.runtime.capi.status.Status maps the Python API's
   exceptions to them). */
typedef enum diffvos_status {
    DIFFVOS_OK = 0,
    DIFFVOS_ERR_NULL_HANDLE = 1,      /* a handle or a required out-pointer is NULL */
    DIFFVOS_ERR_INVALID_HANDLE = 2,   /* destroyed, never created, or of the wrong kind */
    DIFFVOS_ERR_INVALID_ARGUMENT = 3, /* a bad option, size, object id or mask */
    DIFFVOS_ERR_BUFFER = 4,           /* a buffer that is NULL or of the wrong size */
    DIFFVOS_ERR_BUNDLE = 5,           /* bundle missing, corrupted or unsupported */
    DIFFVOS_ERR_BACKEND = 6,          /* ONNX Runtime could not create or run a graph */
    DIFFVOS_ERR_NOT_STARTED = 7,      /* track before any object was added */
    DIFFVOS_ERR_NO_SUCH_OBJECT = 8,   /* remove of an id the session does not track */
    DIFFVOS_ERR_BUSY = 9,             /* session in use by another thread (REFUSE mode) */
    DIFFVOS_ERR_OUT_OF_MEMORY = 10,
    DIFFVOS_ERR_RUNTIME = 11,         /* the embedded Python runtime could not start */
    DIFFVOS_ERR_INTERNAL = 12         /* a bug: please report it with the message */
} diffvos_status;

typedef enum diffvos_color { DIFFVOS_COLOR_BGR = 0, DIFFVOS_COLOR_RGB = 1 } diffvos_color;

typedef enum diffvos_concurrency {
    DIFFVOS_CONCURRENCY_SERIALIZE = 0, /* a second thread waits for the first */
    DIFFVOS_CONCURRENCY_REFUSE = 1     /* a second thread gets DIFFVOS_ERR_BUSY */
} diffvos_concurrency;

typedef struct diffvos_runtime diffvos_runtime; /* opaque */
typedef struct diffvos_session diffvos_session; /* opaque */

typedef struct diffvos_runtime_options {
    const char *backend;  /* "auto" (or NULL), "tensorrt", "cuda", "cpu", or "trt" (native TensorRT) (default auto) */
    int32_t threads;      /* ONNX Runtime intra-op threads, 0 = its default (default 0) */
    int32_t verify_files; /* nonzero: check every graph's sha256 on load (default 1) */
    int32_t allow_failed_calibration; /* nonzero: load an INT8 bundle that failed its calibration gate (default 0) */
} diffvos_runtime_options;

typedef struct diffvos_session_options {
    int32_t color;          /* diffvos_color of the frames passed in (default BGR) */
    int32_t concurrency;    /* diffvos_concurrency (default serialize) */
    int32_t memory;         /* past frames kept besides the first (default 28) */
    int32_t topk;           /* correspondences kept per position (default 15) */
    int32_t radius;         /* local window radius in feature cells, 0 = none (default 15) */
    float temperature;      /* affinity temperature (default 0.2) */
    const char *mag_filter; /* "off", "adaptive" or a radius in feature cells; NULL = default (default 12) */
    int32_t seed;           /* seed of the fixed noise bank (default 0) */
    int32_t fresh_noise;    /* nonzero: new noise every frame (default 0) */
    const char *head_weights;       /* attention bundles: "uniform" or "adaptive"; NULL = default (default uniform) */
    const char *propagation_kernel; /* "graph" (ONNX graph on the model's device) or "numpy"; NULL = default (default graph) */
    int32_t inversion_steps;        /* DDIM inversion steps instead of noise, 0 = noise (bundle with a noise graph) (default 0) */
} diffvos_session_options;

/* Per-stage times of the last add/track call, in milliseconds. */
typedef struct diffvos_timings {
    double preprocess_ms;
    double vae_ms;
    double features_ms;
    double propagate_ms;
    double postprocess_ms;
    double total_ms; /* the whole call, API checks and copies included */
} diffvos_timings;

/* Library. */
DIFFVOS_API const char *diffvos_version(void);              /* static string, e.g. "0.1.0" */
DIFFVOS_API int32_t diffvos_api_version(void);              /* DIFFVOS_API_VERSION of the library */
DIFFVOS_API const char *diffvos_status_string(int32_t status); /* static string */
DIFFVOS_API const char *diffvos_last_error(void);           /* this thread's last failure, "" if none */
/* Comma-separated backends usable here ("tensorrt,cuda,cpu" or "cpu"); static string. */
DIFFVOS_API diffvos_status diffvos_available_backends(const char **out);

/* Options: fill with the defaults first, then change what you need. */
DIFFVOS_API diffvos_status diffvos_runtime_options_init(diffvos_runtime_options *options);
DIFFVOS_API diffvos_status diffvos_session_options_init(diffvos_session_options *options);

/* Runtime. options may be NULL (defaults). */
DIFFVOS_API diffvos_status diffvos_runtime_create(const char *bundle_dir, const diffvos_runtime_options *options,
                                                  diffvos_runtime **out);
DIFFVOS_API diffvos_status diffvos_runtime_destroy(diffvos_runtime *runtime);
/* The provider that really runs the graphs, e.g. "CPUExecutionProvider" or "TensorRT (native)". */
DIFFVOS_API diffvos_status diffvos_runtime_provider(diffvos_runtime *runtime, const char **out);
/* The bundle's manifest (diffvos.json) as a JSON string. */
DIFFVOS_API diffvos_status diffvos_runtime_metadata_json(diffvos_runtime *runtime, const char **out);
DIFFVOS_API const char *diffvos_runtime_last_error(diffvos_runtime *runtime);

/* Session: one video stream of width x height frames. options may be NULL (defaults). */
DIFFVOS_API diffvos_status diffvos_session_create(diffvos_runtime *runtime, int32_t width, int32_t height,
                                                  const diffvos_session_options *options, diffvos_session **out);
DIFFVOS_API diffvos_status diffvos_session_destroy(diffvos_session *session);
/* Add the objects of `labels` (every nonzero id not yet tracked) on this frame. The first call
   starts the video; a later one adds objects appearing mid-video, and the frame counts as
   tracked (existing objects are propagated to it). out_labels (nullable) receives the frame's
   label map, new objects included. */
DIFFVOS_API diffvos_status diffvos_session_add_objects(diffvos_session *session, const uint8_t *frame,
                                                       size_t frame_bytes, const uint8_t *labels,
                                                       size_t labels_bytes, uint8_t *out_labels,
                                                       size_t out_labels_bytes);
DIFFVOS_API diffvos_status diffvos_session_remove_object(diffvos_session *session, int32_t object_id);
/* Track one frame. out_probs may be NULL. */
DIFFVOS_API diffvos_status diffvos_session_track(diffvos_session *session, const uint8_t *frame, size_t frame_bytes,
                                                 uint8_t *out_labels, size_t out_labels_bytes, float *out_probs,
                                                 size_t out_probs_count);
/* Forget every object and the memory; the session can start a new video. */
DIFFVOS_API diffvos_status diffvos_session_reset(diffvos_session *session);
DIFFVOS_API diffvos_status diffvos_session_num_objects(diffvos_session *session, int32_t *out);
/* Writes up to `capacity` ids in channel order and the total count to *count. */
DIFFVOS_API diffvos_status diffvos_session_object_ids(diffvos_session *session, int32_t *ids, size_t capacity,
                                                      size_t *count);
DIFFVOS_API diffvos_status diffvos_session_prob_shape(diffvos_session *session, int32_t *channels,
                                                      int32_t *grid_height, int32_t *grid_width);
DIFFVOS_API diffvos_status diffvos_session_timings(diffvos_session *session, diffvos_timings *out);
/* Bytes held by the session: memory bank and buffers (the shared engine is not counted). */
DIFFVOS_API diffvos_status diffvos_session_memory_bytes(diffvos_session *session, uint64_t *out);
DIFFVOS_API const char *diffvos_session_last_error(diffvos_session *session);

/* CFFI-END */

#ifdef __cplusplus
}
#endif

#endif /* DIFFVOS_H */
