/* sbx_signal.h: interface of the native signal handling (also parsed by cffi's cdef:
 * keep it in that subset: plain prototypes, no includes).
 *
 * Two jobs. Kicking: a thread in KVM_RUN is stopped by a real-time "kick" signal (from
 * its call's deadline timer or from another thread's cancel) whose handler sets the
 * run's immediate_exit, so a kick that lands just before guest entry is not lost.
 * Watching: the signals Python handles (SIGINT -> KeyboardInterrupt, and any signal
 * given a Python handler) must stop a call running on the main thread, whichever thread
 * the kernel delivers them to and whenever they land; a watched signal's handler runs
 * Python's own handler first, then kicks the main thread's run out of KVM_RUN (or marks
 * the signal pending, so that a run about to start returns at once). */

/* Installs the kick handler for `signo` (no SA_RESTART). Returns 0 or -errno. Call once
 * per process before sbx_vcpu_run. */
int sbx_signal_init(int signo);

/* Kicks thread `tid` (of this process) out of KVM_RUN: its run ends with
 * SBX_EXIT_KICKED. Returns 0 or -errno. */
int sbx_kick_thread(int tid);

/* Watches `signo`, whose current handler must be Python's (see above): installs a
 * handler that calls it and then kicks the main thread's run. Idempotent. Returns 0, or
 * -EINVAL if `signo` cannot be watched, or -errno. */
int sbx_signal_watch(int signo);

/* Whether `signo` is watched now (its handler is still the one sbx_signal_watch put
 * there: Python's signal.signal() replaces it). */
int sbx_signal_watched(int signo);
