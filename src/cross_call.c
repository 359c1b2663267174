/*
 * cross_call.c - a function run on another thread's loop (cross_call.h):
 * a pipe wakes the loop, a mutex and a condition variable hand the result
 * back.
 */
#include "portrelay/cross_call.h"

#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <unistd.h>

struct cross_call {
	pthread_mutex_t lock;
	pthread_cond_t changed;       /* busy, done or stopped changed */
	int wake[2];                  /* a byte: a call waits */
	struct event *event;
	bool stopped;
	bool busy;                    /* a caller is inside cross_call_run */
	bool done;                    /* its function has run: result holds */
	int (*fn)(void *arg);         /* set while the call waits for the loop */
	void *arg;
	int result;
};

static void cross_call_on_wake(evutil_socket_t fd, short what, void *data)
{
	struct cross_call *call = data;
	char bytes[16];
	(void)what;
	while (read(fd, bytes, sizeof bytes) > 0)
		;
	pthread_mutex_lock(&call->lock);
	int (*fn)(void *) = call->fn;
	void *arg = call->arg;
	call->fn = NULL;
	pthread_mutex_unlock(&call->lock);
	if (fn == NULL)
		return;
	int result = fn(arg);
	pthread_mutex_lock(&call->lock);
	call->result = result;
	call->done = true;
	pthread_cond_broadcast(&call->changed);
	pthread_mutex_unlock(&call->lock);
}

struct cross_call *cross_call_open(struct event_base *base)
{
	struct cross_call *call = calloc(1, sizeof *call);
	if (call == NULL)
		return NULL;
	if (pipe2(call->wake, O_NONBLOCK | O_CLOEXEC) < 0) {
		free(call);
		return NULL;
	}
	pthread_mutex_init(&call->lock, NULL);
	pthread_cond_init(&call->changed, NULL);
	call->event = event_new(base, call->wake[0], EV_READ | EV_PERSIST, cross_call_on_wake,
				call);
	if (call->event == NULL || event_add(call->event, NULL) < 0) {
		call->stopped = true;
		cross_call_free(call);
		return NULL;
	}
	return call;
}

int cross_call_run(struct cross_call *call, int (*fn)(void *arg), void *arg, int if_stopped)
{
	pthread_mutex_lock(&call->lock);
	while (call->busy && !call->stopped)
		pthread_cond_wait(&call->changed, &call->lock);
	if (call->stopped) {
		pthread_mutex_unlock(&call->lock);
		return if_stopped;
	}
	call->busy = true;
	call->done = false;
	call->fn = fn;
	call->arg = arg;
	pthread_mutex_unlock(&call->lock);

	char byte = 'c';
	bool woke = write(call->wake[1], &byte, 1) == 1;

	pthread_mutex_lock(&call->lock);
	while (woke && !call->done && !call->stopped)
		pthread_cond_wait(&call->changed, &call->lock);
	int result = call->done ? call->result : if_stopped;
	call->fn = NULL;
	call->busy = false;
	pthread_cond_broadcast(&call->changed);
	pthread_mutex_unlock(&call->lock);
	return result;
}

void cross_call_stop(struct cross_call *call)
{
	if (call == NULL)
		return;
	pthread_mutex_lock(&call->lock);
	call->stopped = true;
	call->fn = NULL;
	pthread_cond_broadcast(&call->changed);
	pthread_mutex_unlock(&call->lock);
}

void cross_call_free(struct cross_call *call)
{
	if (call == NULL)
		return;
	if (call->event != NULL)
		event_free(call->event);
	close(call->wake[0]);
	close(call->wake[1]);
	pthread_cond_destroy(&call->changed);
	pthread_mutex_destroy(&call->lock);
	free(call);
}
