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

#include "portrelay/log.h"

/* Pipes per worker at most: a slice of the descriptors, bounded both ways. */
#define WORKER_PIPES_MIN 16

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
};

struct worker_pool {
	struct worker *workers;
	unsigned count;
	struct fd_episode fd_episode;
	atomic_uint *udp_flows_open;   /* per forward, all workers */
};

static void worker_on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct worker *worker = arg;
	char byte;
	(void)what;
	while (read(fd, &byte, 1) > 0)
		;
	event_base_loopbreak(worker->base);
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

void worker_pool_counters(const struct worker_pool *pool, struct relay_counters *sum)
{
	memset(sum, 0, sizeof *sum);
	for (unsigned i = 0; i < pool->count; i++) {
		const struct relay_counters *c = &pool->workers[i].ctx.counters;
		sum->tcp_accepted += c->tcp_accepted;
		sum->tcp_connect_failed += c->tcp_connect_failed;
		sum->tcp_reset += c->tcp_reset;
		sum->tcp_idle_closed += c->tcp_idle_closed;
		sum->accept_fd_exhausted += c->accept_fd_exhausted;
		sum->bytes_to_internal += c->bytes_to_internal;
		sum->bytes_to_client += c->bytes_to_client;
		sum->udp_flows_created += c->udp_flows_created;
		sum->udp_flows_expired += c->udp_flows_expired;
		sum->udp_datagrams_to_internal += c->udp_datagrams_to_internal;
		sum->udp_datagrams_to_client += c->udp_datagrams_to_client;
		sum->udp_dropped_table_full += c->udp_dropped_table_full;
		sum->udp_dropped_truncated += c->udp_dropped_truncated;
		sum->udp_dropped_send += c->udp_dropped_send;
		sum->udp_refused += c->udp_refused;
		sum->udp_flow_failed += c->udp_flow_failed;
		sum->ftp_data_opened += c->ftp_data_opened;
		sum->ftp_data_connected += c->ftp_data_connected;
		sum->ftp_data_expired += c->ftp_data_expired;
		sum->ftp_data_dropped += c->ftp_data_dropped;
		sum->ftp_data_refused += c->ftp_data_refused;
		sum->ftp_commands_refused += c->ftp_commands_refused;
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
	for (unsigned i = 0; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->stop_event != NULL)
			event_free(worker->stop_event);
		if (worker->stop_pipe[0] >= 0) {
			close(worker->stop_pipe[0]);
			close(worker->stop_pipe[1]);
		}
		if (worker->base != NULL)
			event_base_free(worker->base);
	}
	free(pool->workers);
	free(pool->udp_flows_open);
	free(pool);
}
