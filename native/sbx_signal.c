/* sbx_signal.c: kicking vCPU threads out of KVM_RUN, deadline timers, watched signals. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "sbx_internal.h"
#include "sbx_signal.h"

#define MAX_SIGNAL 65

static int kick_signo;
/* The run this thread is in, for the kick handler; whether it was kicked. */
static __thread struct kvm_run *volatile tls_run;
static __thread volatile sig_atomic_t tls_kicked;
static __thread pid_t tls_tid;
/* The run the main thread is in (only the main thread runs Python's signal handlers,
 * so only its call can be stopped by one), and whether a watched signal arrived that
 * the main thread's next run must report first. Read and written with __atomic. */
static struct kvm_run *main_run;
static int python_signal_pending;
/* Python's handler of each watched signal (written before ours is installed). */
static struct sigaction python_action[MAX_SIGNAL];

/* The process id (the main thread's tid), cached: glibc's getpid() is a system call.
 * Reset in a forked child, as is the forking thread's cached tid. */
static pid_t process_id;

static void after_fork_in_child(void) {
    process_id = getpid();
    tls_tid = 0;
}

static pid_t this_tid(void) {
    if (!tls_tid) tls_tid = (pid_t)syscall(SYS_gettid);
    return tls_tid;
}

static int on_main_thread(void) { return this_tid() == process_id; }

static void on_kick(int signo) {
    (void)signo;
    struct kvm_run *run = tls_run;
    /* immediate_exit makes a KVM_RUN that has not entered the guest yet return EINTR at
     * once, so a signal that lands just before guest entry is not lost. */
    if (run) run->immediate_exit = 1;
    tls_kicked = 1;
}

static void on_watched(int signo, siginfo_t *info, void *context) {
    int saved_errno = errno;
    const struct sigaction *python = &python_action[signo];
    if (python->sa_flags & SA_SIGINFO)
        python->sa_sigaction(signo, info, context);
    else if (python->sa_handler != SIG_DFL && python->sa_handler != SIG_IGN)
        python->sa_handler(signo);
    __atomic_store_n(&python_signal_pending, 1, __ATOMIC_SEQ_CST);
    struct kvm_run *run = __atomic_load_n(&main_run, __ATOMIC_SEQ_CST);
    if (run) {
        run->immediate_exit = 1; /* the main thread is about to enter, or in, KVM_RUN */
        pid_t pid = getpid(); /* the main thread's tid is the process id */
        if (this_tid() != pid) syscall(SYS_tgkill, pid, pid, kick_signo);
    }
    errno = saved_errno;
}

int sbx_signal_init(int signo) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_kick;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: KVM_RUN must return EINTR */
    if (sigaction(signo, &sa, NULL) != 0) return -errno;
    if (!kick_signo) pthread_atfork(NULL, NULL, after_fork_in_child);
    kick_signo = signo;
    process_id = getpid();
    return 0;
}

int sbx_kick_thread(int tid) {
    if (!kick_signo) return -EINVAL;
    if (syscall(SYS_tgkill, getpid(), tid, kick_signo) != 0) return -errno;
    return 0;
}

static int is_ours(const struct sigaction *sa) {
    return (sa->sa_flags & SA_SIGINFO) && sa->sa_sigaction == on_watched;
}

int sbx_signal_watched(int signo) {
    struct sigaction cur;
    if (signo <= 0 || signo >= MAX_SIGNAL || sigaction(signo, NULL, &cur) != 0) return 0;
    return is_ours(&cur);
}

int sbx_signal_watch(int signo) {
    struct sigaction cur;
    if (signo <= 0 || signo >= MAX_SIGNAL || signo == kick_signo) return -EINVAL;
    if (sigaction(signo, NULL, &cur) != 0) return -errno;
    if (is_ours(&cur)) return 0;
    if (!(cur.sa_flags & SA_SIGINFO) && (cur.sa_handler == SIG_DFL || cur.sa_handler == SIG_IGN))
        return -EINVAL;
    python_action[signo] = cur;
    struct sigaction sa = cur;
    sa.sa_sigaction = on_watched;
    sa.sa_flags = (cur.sa_flags | SA_SIGINFO) & ~(SA_RESETHAND | SA_RESTART);
    if (sigaction(signo, &sa, NULL) != 0) return -errno;
    return 0;
}

/* Python's signal.signal() puts Python's own handler back (asyncio.run does, for
 * SIGINT): watch SIGINT again when its handler is Python's, not ours. One sigaction
 * read, at most every 10 ms, on the main thread's runs. */
static void rewatch_sigint(void) {
    static int64_t next_check_ns;
    struct timespec now;
    struct sigaction cur;
    if (!python_action[SIGINT].sa_handler) return;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
    int64_t now_ns = (int64_t)now.tv_sec * 1000000000 + now.tv_nsec;
    if (now_ns < next_check_ns) return;
    next_check_ns = now_ns + 10000000;
    if (sigaction(SIGINT, NULL, &cur) != 0) return;
    if (is_ours(&cur) || (cur.sa_flags & SA_SIGINFO)) return;
    if (cur.sa_handler == python_action[SIGINT].sa_handler) sbx_signal_watch(SIGINT);
}

int sbx_run_tid(void) { return this_tid(); }

int sbx_run_enter(struct kvm_run *run) {
    tls_kicked = 0;
    tls_run = run;
    if (!on_main_thread()) return 0;
    rewatch_sigint();
    __atomic_store_n(&main_run, run, __ATOMIC_SEQ_CST);
    /* A watched signal that came before main_run was published did not set
     * immediate_exit: report it now (Python runs its handler when the run returns). */
    return __atomic_exchange_n(&python_signal_pending, 0, __ATOMIC_SEQ_CST);
}

void sbx_run_leave(void) {
    if (tls_run && on_main_thread()) __atomic_store_n(&main_run, NULL, __ATOMIC_SEQ_CST);
    tls_run = NULL;
}

int sbx_run_kicked(void) {
    /* A watched signal counts as an interruption, not a kick, even when the main thread
     * was kicked to see it. */
    if (on_main_thread() && __atomic_exchange_n(&python_signal_pending, 0, __ATOMIC_SEQ_CST))
        return 0;
    return tls_kicked;
}

/* -- deadline timers: one per thread, created on first use, deleted at thread exit ---- */

static __thread timer_t tls_timer;
static __thread int tls_timer_made;
static pthread_key_t timer_key;
static pthread_once_t timer_key_once = PTHREAD_ONCE_INIT;

static void delete_timer(void *value) { timer_delete((timer_t)((uintptr_t)value - 1)); }

static void make_timer_key(void) { pthread_key_create(&timer_key, delete_timer); }

int sbx_timer_arm(int64_t timeout_ns) {
    if (!tls_timer_made) {
        struct sigevent sev;
        memset(&sev, 0, sizeof sev);
        sev.sigev_notify = SIGEV_THREAD_ID;
        sev.sigev_signo = kick_signo;
        sev._sigev_un._tid = this_tid();
        if (timer_create(CLOCK_MONOTONIC, &sev, &tls_timer) != 0) return -errno;
        pthread_once(&timer_key_once, make_timer_key);
        /* +1: a timer id may be 0, and a key's destructor runs only for non-NULL values. */
        pthread_setspecific(timer_key, (void *)((uintptr_t)tls_timer + 1));
        tls_timer_made = 1;
    }
    struct itimerspec its;
    its.it_value.tv_sec = timeout_ns / 1000000000;
    its.it_value.tv_nsec = timeout_ns % 1000000000;
    /* Retry every millisecond until the vCPU is out. */
    its.it_interval.tv_sec = 0;
    its.it_interval.tv_nsec = 1000000;
    if (timer_settime(tls_timer, 0, &its, NULL) != 0) return -errno;
    return 0;
}

void sbx_timer_disarm(void) {
    /* A kick already generated is delivered before this returns to user space (the
     * signal is unblocked), so none can land after the run has ended. */
    struct itimerspec off;
    memset(&off, 0, sizeof off);
    timer_settime(tls_timer, 0, &off, NULL);
}
