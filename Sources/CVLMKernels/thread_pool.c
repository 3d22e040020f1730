/* A persistent pool of worker threads for the kernels' fork-join loops (see vlm_kernels.h).

   Decode runs a few hundred short parallel loops per token (every mat-vec of every layer). Waking
   a sleeping thread costs tens of microseconds, about what a small mat-vec takes, so after each
   loop the workers spin for a while (as ggml's threads do) and only then sleep on a condition
   variable. The caller takes chunks too; a loop started while the pool is busy (from another
   thread, or from inside a chunk) runs on the caller alone. */

#include "vlm_kernels.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <time.h>
#if defined(__x86_64__)
#include <immintrin.h>
#define CPU_RELAX() _mm_pause()
#else
#define CPU_RELAX() ((void)0)
#endif

#define MAX_WORKERS 255
/* How long an idle worker spins before it sleeps: longer than the serial work between two
   loops of a decode step (norms, RoPE, attention of a small model), far shorter than a pause
   a person would notice as a busy core. */
#define SPIN_NANOSECONDS 2000000L

static struct {
    pthread_mutex_t lock;
    pthread_cond_t wake;
    int workers;                     /* started worker threads */
    atomic_int busy;                 /* a loop is being run (taken with compare-exchange) */
    atomic_uint generation;          /* bumped once per loop; workers wait for a change */
    atomic_int sleepers;             /* workers blocked (or about to block) on `wake` */
    /* The current loop: written before `generation` is bumped, read after it is seen. */
    vlm_chunk_fn fn;
    void *context;
    int chunks;
    atomic_int next;                 /* next chunk index to take */
    atomic_int done;                 /* chunks finished */
    atomic_int left;                 /* workers that have not yet left the current loop */
} pool = { .lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER };

static _Thread_local int inside_pool_chunk;

static long monotonic_ns(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000000000L + t.tv_nsec;
}

/* Takes chunks of the current loop until none is left. */
static void run_chunks(void) {
    inside_pool_chunk = 1;
    for (;;) {
        /* Acquire: the loop's fn, context and chunks were written before `next` was reset. */
        int c = atomic_fetch_add_explicit(&pool.next, 1, memory_order_acq_rel);
        if (c >= pool.chunks) break;
        pool.fn(pool.context, c);
        atomic_fetch_add_explicit(&pool.done, 1, memory_order_release);
    }
    inside_pool_chunk = 0;
}

/* A worker takes part in every loop, and the loop returns only after each worker has left it: a
   worker still inside loop N when loop N + 1 is set up would otherwise take a chunk number from
   loop N's counter and run it with loop N + 1's function, or loop N's after its caller returned
   (seen as a trap in a long fine-tune). `start` is the generation before the loop that created it. */
static void *worker_main(void *start) {
    unsigned seen = (unsigned)(uintptr_t)start;
    for (;;) {
        long deadline = monotonic_ns() + SPIN_NANOSECONDS;
        unsigned now = seen;
        for (int spins = 0; (now = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen; spins++) {
            CPU_RELAX();
            if ((spins & 1023) == 1023 && monotonic_ns() > deadline) {
                pthread_mutex_lock(&pool.lock);
                atomic_fetch_add(&pool.sleepers, 1);
                while ((now = atomic_load(&pool.generation)) == seen) pthread_cond_wait(&pool.wake, &pool.lock);
                atomic_fetch_sub(&pool.sleepers, 1);
                pthread_mutex_unlock(&pool.lock);
                break;
            }
        }
        seen = now;
        run_chunks();
        atomic_fetch_sub_explicit(&pool.left, 1, memory_order_release);
    }
    return NULL;
}

/* Starts workers up to `count` (called with `busy` held, so never concurrently). */
static void ensure_workers(int count) {
    if (count > MAX_WORKERS) count = MAX_WORKERS;
    while (pool.workers < count) {
        pthread_t thread;
        pthread_attr_t attributes;
        pthread_attr_init(&attributes);
        pthread_attr_setdetachstate(&attributes, PTHREAD_CREATE_DETACHED);
        int failed = pthread_create(&thread, &attributes, worker_main,
                                    (void *)(uintptr_t)atomic_load(&pool.generation));
        pthread_attr_destroy(&attributes);
        if (failed) break;   /* fewer helpers; the caller still runs every chunk left over */
        pool.workers++;
    }
}

void vlm_parallel_run(int chunks, int threads, vlm_chunk_fn fn, void *context) {
    int expected = 0;
    if (chunks <= 1 || threads <= 1 || inside_pool_chunk
        || !atomic_compare_exchange_strong(&pool.busy, &expected, 1)) {
        for (int c = 0; c < chunks; c++) fn(context, c);
        return;
    }
    ensure_workers(threads - 1);
    pool.fn = fn;
    pool.context = context;
    pool.chunks = chunks;
    atomic_store_explicit(&pool.done, 0, memory_order_relaxed);
    atomic_store_explicit(&pool.left, pool.workers, memory_order_relaxed);
    atomic_store_explicit(&pool.next, 0, memory_order_release);
    atomic_fetch_add(&pool.generation, 1);   /* sequentially consistent: pairs with `sleepers` */
    if (atomic_load(&pool.sleepers) > 0) {
        pthread_mutex_lock(&pool.lock);
        pthread_cond_broadcast(&pool.wake);
        pthread_mutex_unlock(&pool.lock);
    }
    run_chunks();
    while (atomic_load_explicit(&pool.done, memory_order_acquire) < chunks
           || atomic_load_explicit(&pool.left, memory_order_acquire) > 0) CPU_RELAX();
    atomic_store_explicit(&pool.busy, 0, memory_order_release);
}
