/* tools/musl/glibcxx_on_musl.h — lets Debian's libstdc++ headers, which are
 * configured for glibc, compile against musl's C headers. `make size` forces
 * it into the aarch64-musl build (-include) and nowhere else.
 *
 * Debian ships musl for arm64 but no C++ library built for it. The static
 * MLP program links Debian's libstdc++.a (built for glibc) with musl's
 * libc.a; it uses std::vector, std::thread and a few strings, whose code is
 * in the headers or calls only POSIX functions musl has. This file supplies
 * the glibc names those headers expect; glibcxx_on_musl.c supplies the few
 * glibc symbols libstdc++.a refers to. A toolchain built for musl (Alpine's,
 * or a musl-cross-make one) needs neither file.
 */
#ifndef NN_GLIBCXX_ON_MUSL_H
#define NN_GLIBCXX_ON_MUSL_H

/* os_defines.h and <cmath> test glibc's version; musl is none of them. */
#define __GLIBC_PREREQ(major, minor) 0
#define _GLIBCXX_NO_OBSOLETE_ISINF_ISNAN_DYNAMIC 0
/* c++locale.h names glibc's __locale_t; musl calls it locale_t. */
#define __locale_t locale_t

#include <pthread.h>
#include <time.h>

/* glibc's ctype class bits (ctype.h, little-endian), which ctype_base.h
 * spells out. Only the C++ locale facets read them, and this program has
 * none; they must exist for the header to compile. */
#define NN_GLIBC_ISBIT(bit) ((bit) < 8 ? ((1 << (bit)) << 8) : ((1 << (bit)) >> 8))
enum {
    _ISupper = NN_GLIBC_ISBIT(0), _ISlower = NN_GLIBC_ISBIT(1), _ISalpha = NN_GLIBC_ISBIT(2),
    _ISdigit = NN_GLIBC_ISBIT(3), _ISxdigit = NN_GLIBC_ISBIT(4), _ISspace = NN_GLIBC_ISBIT(5),
    _ISprint = NN_GLIBC_ISBIT(6), _ISgraph = NN_GLIBC_ISBIT(7), _ISblank = NN_GLIBC_ISBIT(8),
    _IScntrl = NN_GLIBC_ISBIT(9), _ISpunct = NN_GLIBC_ISBIT(10), _ISalnum = NN_GLIBC_ISBIT(11)
};

#ifdef __cplusplus
extern "C" {
#endif
/* glibc 2.30's clock-selecting waits, which <mutex> and <condition_variable>
 * call for timed waits (defined in glibcxx_on_musl.c). */
int pthread_cond_clockwait(pthread_cond_t* cond, pthread_mutex_t* mutex, clockid_t clock,
                           const struct timespec* abstime);
int pthread_mutex_clocklock(pthread_mutex_t* mutex, clockid_t clock, const struct timespec* abstime);
#ifdef __cplusplus
}
#endif

#endif /* NN_GLIBCXX_ON_MUSL_H */
