/* tools/musl/glibcxx_on_musl.c — the glibc symbols that Debian's libstdc++.a
 * and libgcc_eh.a refer to and musl does not define, for the aarch64-musl
 * build of `make size` (see glibcxx_on_musl.h for why it exists).
 */
#define _POSIX_C_SOURCE 200809L
#include <errno.h>
#include <pthread.h>
#include <time.h>

/* glibc sets this to 1 while a process has one thread, and libstdc++ then
 * skips atomic operations. 0 keeps them always: correct, a little slower. */
char __libc_single_threaded = 0;

/* glibc 2.35's lookup of a code address's unwind tables, which libgcc's
 * unwinder tries first. Failing sends exceptions nowhere; the library is
 * built without them (-fno-exceptions), so nothing unwinds. */
struct dl_find_object;
int _dl_find_object(void* address, struct dl_find_object* result) {
    (void)address;
    (void)result;
    return -1;
}

/* Timed waits against a chosen clock. musl's condition variables and mutexes
 * time out against CLOCK_REALTIME (their default attribute), so a deadline on
 * another clock is moved onto it: now on CLOCK_REALTIME plus what is left
 * until the deadline on its own clock. */
static int to_realtime(clockid_t clock, const struct timespec* deadline, struct timespec* out) {
    if (clock == CLOCK_REALTIME) {
        *out = *deadline;
        return 0;
    }
    struct timespec now_clock, now_real;
    if (clock_gettime(clock, &now_clock) != 0 || clock_gettime(CLOCK_REALTIME, &now_real) != 0) return EINVAL;
    long long left = (long long)(deadline->tv_sec - now_clock.tv_sec) * 1000000000LL +
                     (deadline->tv_nsec - now_clock.tv_nsec);
    if (left < 0) left = 0;
    long long ns = now_real.tv_nsec + left % 1000000000LL;
    out->tv_sec = now_real.tv_sec + (time_t)(left / 1000000000LL) + (time_t)(ns / 1000000000LL);
    out->tv_nsec = (long)(ns % 1000000000LL);
    return 0;
}

int pthread_cond_clockwait(pthread_cond_t* cond, pthread_mutex_t* mutex, clockid_t clock,
                           const struct timespec* abstime) {
    struct timespec real;
    int err = to_realtime(clock, abstime, &real);
    return err ? err : pthread_cond_timedwait(cond, mutex, &real);
}

int pthread_mutex_clocklock(pthread_mutex_t* mutex, clockid_t clock, const struct timespec* abstime) {
    struct timespec real;
    int err = to_realtime(clock, abstime, &real);
    return err ? err : pthread_mutex_timedlock(mutex, &real);
}
