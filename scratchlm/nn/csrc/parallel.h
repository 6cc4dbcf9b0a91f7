/* parallel_for(n, fn, ctx): fn(ctx, lo, hi) over [0, n) cut into one contiguous range per
   thread (OpenMP's static schedule), for the kernels' loops over rows.

   Built with OpenMP (gcc, clang with libomp) it is an OpenMP parallel region on the runtime
   PyTorch has loaded, so the thread count is torch's. Built without (Apple's clang has no
   OpenMP) it is a small pool of pthreads, as many as set_threads says (nn/native.py passes
   torch's count; the default is the CPUs online): the caller takes the first range, the
   workers the others; a worker spins briefly for the next job (a decode step calls the
   kernels a few hundred times a token, microseconds apart) and then sleeps. One job runs at a
   time; a process forked while the pool runs starts a new pool in the child. */

#ifndef SCRATCHLM_PARALLEL_H
#define SCRATCHLM_PARALLEL_H

#include <stdint.h>

typedef void (*range_fn)(void *ctx, int64_t lo, int64_t hi);

#ifdef _OPENMP
#include <omp.h>

static void parallel_for(int64_t n, range_fn fn, void *ctx) {
    if (n <= 0)
        return;
#pragma omp parallel
    {
        int64_t t = omp_get_thread_num(), T = omp_get_num_threads();
        int64_t lo = n * t / T, hi = n * (t + 1) / T;
        if (lo < hi)
            fn(ctx, lo, hi);
    }
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
    int64_t n;
    long born[POOL_MAX]; /* the generation when each worker was made: its first job is the next */
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
        int64_t lo = pool.n * id / T, hi = pool.n * (id + 1) / T;
        if (lo < hi)
            pool.fn(pool.ctx, lo, hi);
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
    pool.n = n;
    atomic_store(&pool.pending, pool.size - 1);
    pthread_mutex_lock(&pool.lock);
    atomic_fetch_add_explicit(&pool.generation, 1, memory_order_release);
    pthread_cond_broadcast(&pool.wake);
    pthread_mutex_unlock(&pool.lock);
    int64_t hi = n / pool.size;
    if (hi > 0)
        fn(ctx, 0, hi);
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
