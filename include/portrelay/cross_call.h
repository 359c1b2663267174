/*
 * cross_call.h - runs a function on another thread's event loop and waits
 * for its result: how the admin endpoint's thread has the main thread
 * apply a change (reloads run on the main thread only, so a change through
 * the API and a SIGHUP never run at once).
 *
 * One call at a time: a second caller waits for the first. Once stopped
 * (the loop has ended), waiting and later calls return their if_stopped
 * value without running anything.
 */
#ifndef PORTRELAY_CROSS_CALL_H
#define PORTRELAY_CROSS_CALL_H

#include <event2/event.h>

struct cross_call;

/* Runs calls on base's loop; NULL when out of memory or descriptors. */
struct cross_call *cross_call_open(struct event_base *base);

/*
 * From any thread but base's: has fn(arg) run on base's loop and returns
 * its result; if_stopped if the loop stops first.
 */
int cross_call_run(struct cross_call *call, int (*fn)(void *arg), void *arg, int if_stopped);

/* No call runs from now on; callers waiting get their if_stopped. Base's thread. */
void cross_call_stop(struct cross_call *call);

/* After cross_call_stop and once no caller is inside cross_call_run. */
void cross_call_free(struct cross_call *call);

#endif
