/*
 * worker.c - event-loop threads, one relay context each.
 */
#include "portrelay/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "portrelay/listener.h"
#include "portrelay/log.h"
#include "portrelay/udp_relay.h"

/* Pipes per worker at most: a slice of the descriptors, bounded both ways. */
#define WORKER_PIPES_MIN 16
/* While draining, how often a worker looks whether its last session ended. */
#define WORKER_DRAIN_CHECK_MS 10
/* The byte on the stop pipe that asks for a drain; any other stops. */
#define WORKER_DRAIN_BYTE 'd'

struct worker {
	struct worker_pool *pool;
	unsigned index;
	struct event_base *base;
	struct relay_ctx ctx;
	bool ctx_ready;
	/* Another thread asks this one to stop by writing a byte here. */
	int stop_pipe[2];
	struct event *stop_event;
	pthread_t thread;
	bool thread_started;
	/* Shutdown with shutdown_timeout: no more accepting, sessions end by themselves. */
	bool draining;
	atomic_bool drained;           /* draining, and no session left */
	struct event *drain_timer;
};

struct worker_pool {
	struct worker *workers;
	unsigned count;
	struct fd_episode fd_episode;
	atomic_uint *udp_flows_open;   /* per forward, all workers */
	/* worker_pool_drain: the shutdown_timeout deadline, on the main thread. */
	struct event *drain_deadline;
	double drain_timeout;
};

static void worker_start_drain(struct worker *worker);

static void worker_on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct worker *worker = arg;
	char byte;
	bool stop = false, drain = false;
	(void)what;
	while (read(fd, &byte, 1) > 0) {
		if (byte == WORKER_DRAIN_BYTE)
			drain = true;
		else
			stop = true;
	}
	if (stop)
		event_base_loopbreak(worker->base);
	else if (drain)
		worker_start_drain(worker);
}

/*
 * Theory of the graceful stop (worker_pool_drain): every worker closes its
 * listeners (new connections are refused by the kernel) and its UDP sockets
 * with their flows (UDP has no connection to finish), and keeps relaying
 * its TCP sessions. A worker whose last session ended marks itself drained;
 * one on its own thread leaves its loop. Worker 0, on the main thread, stops
 * the pool once every worker is drained, or the deadline timer does so at
 * shutdown_timeout and worker_pool_close cuts what is left.
 */
static bool worker_pool_all_drained(const struct worker_pool *pool)
{
	for (unsigned i = 0; i < pool->count; i++) {
		if (!atomic_load(&pool->workers[i].drained))
			return false;
	}
	return true;
}

static void worker_check_drained(struct worker *worker)
{
	if (!atomic_load(&worker->drained) && worker->ctx.session_count == 0) {
		atomic_store(&worker->drained, true);
		if (worker->index != 0) {
			event_del(worker->drain_timer);
			event_base_loopbreak(worker->base);
			return;
		}
	}
	if (worker->index == 0 && worker_pool_all_drained(worker->pool)) {
		event_del(worker->drain_timer);
		log_info(NULL, "every connection has finished: stopping");
		worker_pool_stop(worker->pool);
	}
}

static void worker_on_drain_check(evutil_socket_t fd, short what, void *arg)
{
	(void)fd, (void)what;
	worker_check_drained(arg);
}

static void worker_start_drain(struct worker *worker)
{
	if (worker->draining)
		return;
	worker->draining = true;
	listener_set_free(worker->ctx.listeners);
	worker->ctx.listeners = NULL;
	udp_relay_free(worker->ctx.udp);
	worker->ctx.udp = NULL;
	log_debug(NULL, "worker %u: listeners and udp sockets closed, %u connections open",
		  worker->index, worker->ctx.session_count);
	struct timeval period = relay_ms_to_timeval(WORKER_DRAIN_CHECK_MS);
	if (worker->drain_timer != NULL)
		event_add(worker->drain_timer, &period);
	worker_check_drained(worker);
}

static struct relay_options worker_options(struct worker_pool *pool, const struct config *cfg,
					   unsigned count, unsigned long fd_limit, unsigned index)
{
	struct relay_options options = { .fd_episode = &pool->fd_episode };
	if (count > 1)
		options.share = index == 0 ? NET_SHARED_FIRST : NET_SHARED;
	if (cfg->tcp_splice) {
		/* Pipes (two descriptors each) take at most an eighth of the descriptors. */
		unsigned long pipes = fd_limit / 16 / count;
		options.max_pipes = pipes > WORKER_PIPES_MIN ? (unsigned)pipes : WORKER_PIPES_MIN;
	}
	options.udp_flows_open = pool->udp_flows_open;
	return options;
}

static int worker_open(struct worker *worker, const struct config *cfg, unsigned count,
		       unsigned long fd_limit)
{
	worker->stop_pipe[0] = worker->stop_pipe[1] = -1;
	/*
	 * The changelist folds the interest changes a session makes in one turn
	 * into at most one epoll_ctl per socket; no locks, since a base is only
	 * ever touched by its own thread.
	 */
	struct event_config *config = event_config_new();
	if (config != NULL) {
		event_config_set_flag(config, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
		event_config_set_flag(config, EVENT_BASE_FLAG_NOLOCK);
		worker->base = event_base_new_with_config(config);
		event_config_free(config);
	}
	if (worker->base == NULL) {
		log_error(NULL, "cannot create an event loop for worker %u", worker->index);
		return -1;
	}
	struct relay_options options = worker_options(worker->pool, cfg, count, fd_limit,
						      worker->index);
	worker->ctx_ready = true;
	if (relay_ctx_init(&worker->ctx, worker->base, cfg, &options) < 0) {
		log_error(NULL, "out of memory for worker %u", worker->index);
		return -1;
	}
	if (pipe2(worker->stop_pipe, O_NONBLOCK | O_CLOEXEC) < 0) {
		log_error(NULL, "cannot create the stop pipe of worker %u: %s", worker->index,
			  strerror(errno));
		return -1;
	}
	worker->stop_event = event_new(worker->base, worker->stop_pipe[0], EV_READ | EV_PERSIST,
				       worker_on_stop, worker);
	if (worker->stop_event == NULL || event_add(worker->stop_event, NULL) < 0)
		return -1;
	atomic_init(&worker->drained, false);
	worker->drain_timer = event_new(worker->base, -1, EV_PERSIST, worker_on_drain_check,
					worker);
	if (worker->drain_timer == NULL)
		return -1;
	return relay_ctx_open(&worker->ctx);
}

struct worker_pool *worker_pool_open(const struct config *cfg, unsigned count,
				     unsigned long fd_limit)
{
	struct worker_pool *pool = calloc(1, sizeof *pool);
	if (pool == NULL)
		return NULL;
	atomic_init(&pool->fd_episode.active, false);
	atomic_init(&pool->fd_episode.started_ms, 0);
	pool->workers = calloc(count, sizeof *pool->workers);
	pool->udp_flows_open = calloc(cfg->forward_count + 1, sizeof *pool->udp_flows_open);
	if (pool->workers == NULL || pool->udp_flows_open == NULL) {
		free(pool->workers);
		free(pool->udp_flows_open);
		free(pool);
		return NULL;
	}
	for (size_t i = 0; i < cfg->forward_count; i++)
		atomic_init(&pool->udp_flows_open[i], 0);
	/* Workers bind in order, so worker 0's probe runs before anyone shares. */
	for (unsigned i = 0; i < count; i++) {
		struct worker *worker = &pool->workers[pool->count++];
		worker->pool = pool;
		worker->index = i;
		if (worker_open(worker, cfg, count, fd_limit) < 0) {
			worker_pool_free(pool);
			return NULL;
		}
	}
	return pool;
}

struct event_base *worker_pool_main_base(struct worker_pool *pool)
{
	return pool->workers[0].base;
}

const struct relay_ctx *worker_pool_first(const struct worker_pool *pool)
{
	return &pool->workers[0].ctx;
}

static void *worker_thread(void *arg)
{
	struct worker *worker = arg;
	relay_ctx_run(&worker->ctx);
	return NULL;
}

int worker_pool_run(struct worker_pool *pool)
{
	/* Signals belong to the main thread (worker 0's loop handles them). */
	sigset_t block, previous;
	sigemptyset(&block);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &block, &previous);
	for (unsigned i = 1; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		int rc = pthread_create(&worker->thread, NULL, worker_thread, worker);
		if (rc != 0) {
			log_error(NULL, "cannot start worker %u: %s", i, strerror(rc));
			pthread_sigmask(SIG_SETMASK, &previous, NULL);
			worker_pool_stop(pool);
			return -1;
		}
		worker->thread_started = true;
	}
	pthread_sigmask(SIG_SETMASK, &previous, NULL);

	relay_ctx_run(&pool->workers[0].ctx);
	worker_pool_stop(pool);
	return 0;
}

void worker_pool_stop(struct worker_pool *pool)
{
	for (unsigned i = 1; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->thread_started) {
			char byte = 0;
			if (write(worker->stop_pipe[1], &byte, 1) < 0 && errno != EAGAIN)
				log_warn(NULL, "cannot stop worker %u: %s", i, strerror(errno));
			pthread_join(worker->thread, NULL);
			worker->thread_started = false;
		}
	}
	event_base_loopbreak(pool->workers[0].base);
}

static void worker_on_drain_deadline(evutil_socket_t fd, short what, void *arg)
{
	struct worker_pool *pool = arg;
	(void)fd, (void)what;
	worker_pool_stop(pool);
	/* Every other thread is joined now: their counts can be read. */
	unsigned open = 0;
	for (unsigned i = 0; i < pool->count; i++)
		open += pool->workers[i].ctx.session_count;
	log_warn(NULL, "shutdown_timeout (%g s) passed: closing %u connection%s still open",
		 pool->drain_timeout, open, open == 1 ? "" : "s");
}

void worker_pool_drain(struct worker_pool *pool, double timeout)
{
	if (pool->drain_deadline != NULL)
		return;
	pool->drain_timeout = timeout;
	pool->drain_deadline = evtimer_new(pool->workers[0].base, worker_on_drain_deadline, pool);
	struct timeval delay = relay_seconds_to_timeval(timeout);
	if (pool->drain_deadline == NULL || event_add(pool->drain_deadline, &delay) < 0) {
		log_warn(NULL, "cannot arm the shutdown timer: stopping now");
		worker_pool_stop(pool);
		return;
	}
	for (unsigned i = 1; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		char byte = WORKER_DRAIN_BYTE;
		if (!worker->thread_started)
			atomic_store(&worker->drained, true);
		else if (write(worker->stop_pipe[1], &byte, 1) < 0 && errno != EAGAIN)
			log_warn(NULL, "cannot ask worker %u to stop accepting: %s", i,
				 strerror(errno));
	}
	worker_start_drain(&pool->workers[0]);
}

void worker_pool_forward_counters(const struct worker_pool *pool, size_t forward,
				  struct relay_counters *sum)
{
	memset(sum, 0, sizeof *sum);
	for (unsigned i = 0; i < pool->count; i++) {
		const struct relay_ctx *ctx = &pool->workers[i].ctx;
		if (ctx->forward_counters != NULL)
			relay_counters_add(sum, &ctx->forward_counters[forward]);
	}
}

unsigned worker_pool_udp_flows_open(const struct worker_pool *pool, size_t forward)
{
	return atomic_load_explicit(&pool->udp_flows_open[forward], memory_order_relaxed);
}

void worker_pool_counters(const struct worker_pool *pool, struct relay_counters *sum)
{
	memset(sum, 0, sizeof *sum);
	for (unsigned i = 0; i < pool->count; i++) {
		const struct relay_ctx *ctx = &pool->workers[i].ctx;
		if (ctx->forward_counters == NULL)
			continue;
		/* The forwards' blocks and the process's. */
		for (size_t f = 0; f <= ctx->config->forward_count; f++)
			relay_counters_add(sum, &ctx->forward_counters[f]);
	}
}

void worker_pool_close(struct worker_pool *pool)
{
	worker_pool_stop(pool);
	for (unsigned i = 0; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->ctx_ready)
			relay_ctx_close(&worker->ctx);
		worker->ctx_ready = false;
	}
}

void worker_pool_free(struct worker_pool *pool)
{
	if (pool == NULL)
		return;
	worker_pool_close(pool);
	/* On worker 0's base: freed before it. */
	if (pool->drain_deadline != NULL)
		event_free(pool->drain_deadline);
	for (unsigned i = 0; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->stop_event != NULL)
			event_free(worker->stop_event);
		if (worker->drain_timer != NULL)
			event_free(worker->drain_timer);
		if (worker->stop_pipe[0] >= 0) {
			close(worker->stop_pipe[0]);
			close(worker->stop_pipe[1]);
		}
		relay_ctx_free_counters(&worker->ctx);
		if (worker->base != NULL)
			event_base_free(worker->base);
	}
	free(pool->workers);
	free(pool->udp_flows_open);
	free(pool);
}
