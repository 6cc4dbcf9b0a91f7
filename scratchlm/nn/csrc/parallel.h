/* parallel_for(n, fn, ctx): fn(ctx, lo, hi) over [0, n) cut into one contiguous part per
   thread, each taken in pieces (below: a thread done early takes what is left of the others'),
   for the kernels' loops over rows.

   Built with OpenMP (gcc, clang with libomp) it is an OpenMP parallel region on the runtime
   PyTorch has loaded, so the thread count is torch's. Built without (Apple's clang has no
   OpenMP) it is a small pool of pthreads, as many as set_threads says (nn/native.py passes
   torch's count; the default is the CPUs online): the caller takes the first part, the
   workers the others; a worker spins briefly for the next job (a decode step calls the
   kernels a few hundred times a token, microseconds apart) and then sleeps. One job runs at a
   time; a process forked while the pool runs starts a new pool in the child. */

#ifndef SCRATCHLM_PARALLEL_H
#define SCRATCHLM_PARALLEL_H

#include <stdint.h>
#include <stdlib.h>

typedef void (*range_fn)(void *ctx, int64_t lo, int64_t hi);

/* Each thread's contiguous range, taken PARALLEL_PIECES pieces at a time from its front by the
   thread that owns it and then, once a thread's own is done, by the others: a thread slowed
   down (by the OS, or a core another process shares) no longer holds the rest at the end,
   while each thread still streams through its own rows in order. One counter a cache line. */
#define PARALLEL_PIECES 8
typedef struct {
    int64_t next, end, piece;
} __attribute__((aligned(64))) Part;

/* [0, n) as T parts */
static void parts_init(Part *parts, int64_t T, int64_t n) {
    for (int64_t t = 0; t < T; t++) {
        parts[t].next = n * t / T;
        parts[t].end = n * (t + 1) / T;
        parts[t].piece = (parts[t].end - parts[t].next + PARALLEL_PIECES - 1) / PARALLEL_PIECES;
    }
}

/* thread t's share of the work: its own part, then what is left of the others' */
static void parts_run(Part *parts, int64_t T, int64_t t, range_fn fn, void *ctx) {
    for (int64_t k = 0; k < T; k++) {
        Part *p = &parts[(t + k) % T];
        for (;;) {
            int64_t lo = __atomic_fetch_add(&p->next, p->piece, __ATOMIC_RELAXED);
            if (lo >= p->end)
                break;
            fn(ctx, lo, lo + p->piece < p->end ? lo + p->piece : p->end);
        }
    }
}

#ifdef _OPENMP
#include <omp.h>

static void parallel_for(int64_t n, range_fn fn, void *ctx) {
    if (n <= 0)
        return;
    /* parts for as many threads as a region may have; a region that gets fewer (nested, or
       the runtime's choice) takes the missing threads' parts as the others' */
    int64_t T = omp_get_max_threads();
    Part stack[16], *parts = stack;
    if (T > 16 && !(parts = aligned_alloc(64, sizeof(Part) * (size_t)T))) {
        parts = stack; /* no memory: 16 parts, the threads past them take none of their own */
        T = 16;
    }
    parts_init(parts, T, n);
#pragma omp parallel
    {
        int64_t t = omp_get_thread_num();
        if (t < T)
            parts_run(parts, T, t, fn, ctx);
    }
    if (parts != stack)
        free(parts);
}

/* OpenMP's threads are torch's: nothing to set; says -1 (no pool) */
int64_t set_threads(int64_t n) {
    (void)n;
    return -1;
}

#else
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#define POOL_MAX 256
#define POOL_SPIN (1 << 15) /* polls before a waiting thread sleeps: tens of microseconds */

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static struct {
    pthread_mutex_t lock, job;
    pthread_cond_t wake, done;
    int size, started; /* threads of a job (the caller included); workers running */
    atomic_long generation;
    atomic_int pending;
    range_fn fn;
    void *ctx;
    long born[POOL_MAX]; /* the generation when each worker was made: its first job is the next */
    Part parts[POOL_MAX];
} pool = {.lock = PTHREAD_MUTEX_INITIALIZER, .job = PTHREAD_MUTEX_INITIALIZER,
          .wake = PTHREAD_COND_INITIALIZER, .done = PTHREAD_COND_INITIALIZER};

static void *pool_worker(void *arg) {
    int id = (int)(intptr_t)arg;
    long seen = pool.born[id]; /* not the generation now: the first job may already be out */
    for (;;) {
        long g;
        int spins = 0;
        while ((g = atomic_load_explicit(&pool.generation, memory_order_acquire)) == seen) {
            if (++spins < POOL_SPIN) {
                cpu_relax();
                continue;
            }
            pthread_mutex_lock(&pool.lock);
            while ((g = atomic_load(&pool.generation)) == seen)
                pthread_cond_wait(&pool.wake, &pool.lock);
            pthread_mutex_unlock(&pool.lock);
            break;
        }
        seen = g;
        int64_t T = pool.size;
        if (id >= T) /* a worker left over from a larger pool (set_threads): not in this job */
            continue;
        parts_run(pool.parts, T, id, pool.fn, pool.ctx);
        if (atomic_fetch_sub_explicit(&pool.pending, 1, memory_order_acq_rel) == 1) {
            pthread_mutex_lock(&pool.lock);
            pthread_cond_signal(&pool.done);
            pthread_mutex_unlock(&pool.lock);
        }
    }
    return NULL;
}

static void pool_forked(void) { pool.started = 0; } /* the child has none of the threads */

static void pool_start(void) {
    static int atfork = 0;
    if (!atfork) {
        pthread_atfork(NULL, NULL, pool_forked);
        atfork = 1;
    }
    if (pool.size == 0) {
        long cpus = sysconf(_SC_NPROCESSORS_ONLN);
        pool.size = cpus < 1 ? 1 : cpus > POOL_MAX ? POOL_MAX : (int)cpus;
    }
    for (; pool.started < pool.size - 1; pool.started++) { /* worker ids 1, 2, ... */
        pthread_t t;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pool.born[pool.started + 1] = atomic_load(&pool.generation);
        if (pthread_create(&t, &attr, pool_worker, (void *)(intptr_t)(pool.started + 1))) {
            pthread_attr_destroy(&attr);
            pool.size = pool.started + 1; /* fewer threads than asked: run with those */
            break;
        }
        pthread_attr_destroy(&attr);
    }
}

static void parallel_for(int64_t n, range_fn fn, void *ctx) {
    if (n <= 0)
        return;
    pthread_mutex_lock(&pool.job);
    pool_start();
    if (pool.size <= 1 || n == 1) {
        pthread_mutex_unlock(&pool.job);
        fn(ctx, 0, n);
        return;
    }
    pool.fn = fn;
    pool.ctx = ctx;
    parts_init(pool.parts, pool.size, n);
    atomic_store(&pool.pending, pool.size - 1);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    parts_run(pool.parts, pool.size, 0, fn, ctx);
    for (int spins = 0; atomic_load_explicit(&pool.pending, memory_order_acquire) > 0;) {
        if (++spins < POOL_SPIN) {
            cpu_relax();
            continue;
        }
        pthread_mutex_lock(&pool.lock);
        while (atomic_load(&pool.pending) > 0)
            pthread_cond_wait(&pool.done, &pool.lock);
        pthread_mutex_unlock(&pool.lock);
    }
    pthread_mutex_unlock(&pool.job);
}

/* The pool's size (the caller's thread included), at most POOL_MAX; returns it. Workers
   beyond a smaller size stay, idle: they wake with each job but take no part in it. */
int64_t set_threads(int64_t n) {
    pthread_mutex_lock(&pool.job);
    pool.size = n < 1 ? 1 : n > POOL_MAX ? POOL_MAX : (int)n;
    pthread_mutex_unlock(&pool.job);
    return pool.size;
}
#endif
#endif
