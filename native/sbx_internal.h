/* sbx_internal.h: what the native files share and Python never sees (not parsed by cffi). */
#ifndef SBX_INTERNAL_H
#define SBX_INTERNAL_H

#include <stdint.h>
#include <linux/kvm.h>

/* Registers `run` as this thread's current run (for the kick handler) and, on the main
 * thread, as the main run (for watched signals). Returns 1 if a watched signal arrived
 * since the last run of the main thread and Python has yet to see it: then the caller
 * must not enter KVM_RUN (it calls sbx_run_leave and reports an interruption). */
int sbx_run_enter(struct kvm_run *run);

/* This thread's id (cached). */
int sbx_run_tid(void);

/* Unregisters the current run. */
void sbx_run_leave(void);

/* Whether this thread was kicked since sbx_run_enter. */
int sbx_run_kicked(void);

/* Arms this thread's deadline timer to kick it after `timeout_ns` and then every
 * millisecond until disarmed. Returns 0 or -errno. */
int sbx_timer_arm(int64_t timeout_ns);

/* Disarms this thread's deadline timer. */
void sbx_timer_disarm(void);

#endif
