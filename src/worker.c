/*
 * worker.c - event-loop threads, one relay context each.
 */
#include "portrelay/worker.h"

#include <errno.h>
#include <event2/event.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "portrelay/listener.h"
#include "portrelay/port_claims.h"
#include "portrelay/source_table.h"
#include "portrelay/log.h"
#include "portrelay/tcp_relay.h"
#include "portrelay/udp_relay.h"

/* Pipes per worker at most: a slice of the descriptors, bounded both ways. */
#define WORKER_PIPES_MIN 16
/* While draining, how often a worker looks whether its last session ended. */
#define WORKER_DRAIN_CHECK_MS 10
/* Bytes on the stop pipe: a drain, a reload request (pool->mail); any other stops. */
#define WORKER_DRAIN_BYTE 'd'
#define WORKER_MAIL_BYTE 'm'

/* What the main thread asks a worker during a reload (worker_pool_reload). */
enum worker_request {
	WORKER_NONE,
	WORKER_PREPARE,
	WORKER_COMMIT,
	WORKER_ABORT,
};

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
	/* Reloads: what prepare opened, until commit or abort. */
	struct listener_set *next_listeners;
	struct udp_plan *next_udp;
	/* Closes what is left on old rules at drain_timeout. */
	struct event *old_rules_timer;
	/* The request the main thread posted and the answer; under pool->mail_lock. */
	enum worker_request request;
	bool answered;
	int result;
	char error[512];
};

struct worker_pool {
	struct worker *workers;
	unsigned count;
	struct fd_episode fd_episode;
	/*
	 * The rules in force. Workers run their own reference (ctx.rules);
	 * this one is for readers on other threads (the admin endpoint), who
	 * take a reference under rules_lock: swapped only by a reload.
	 */
	pthread_mutex_t rules_lock;
	struct ruleset *rules;
	struct ruleset *next_rules;    /* during a reload */
	pthread_mutex_t mail_lock;
	pthread_cond_t mail_changed;
	atomic_ullong reloads_succeeded;
	atomic_ullong reloads_failed;
	/* Admission control shared by the workers (struct relay_options). */
	struct source_table *sources;
	atomic_uint tcp_open_total;
	atomic_uint udp_flows_total;
	unsigned max_connections;
	unsigned max_udp_flows;
	unsigned max_udp_ported;
	atomic_uint udp_ported_total;
	struct port_claims *udp_draining;
	unsigned fd_spare;
	unsigned fd_reserve;
	bool tcp_unbudgeted;           /* an explicit max_connections is the only TCP bound */
	/* worker_pool_drain: the shutdown_timeout deadline, on the main thread. */
	struct event *drain_deadline;
	double drain_timeout;
};

static void worker_start_drain(struct worker *worker);
static void worker_answer_mail(struct worker *worker);

static void worker_on_stop(evutil_socket_t fd, short what, void *arg)
{
	struct worker *worker = arg;
	char byte;
	bool stop = false, drain = false, mail = false;
	(void)what;
	while (read(fd, &byte, 1) > 0) {
		if (byte == WORKER_DRAIN_BYTE)
			drain = true;
		else if (byte == WORKER_MAIL_BYTE)
			mail = true;
		else
			stop = true;
	}
	if (mail)
		worker_answer_mail(worker);
	if (stop)
		event_base_loopbreak(worker->base);
	else if (drain)
		worker_start_drain(worker);
}

/* ---- the rules a worker runs ------------------------------------------------- */

/*
 * Theory of a reload (worker_pool_reload). The main thread has validated
 * the new configuration and published it as a ruleset; applying it takes
 * two steps in every worker, each on the worker's own loop:
 *
 *   prepare  bind and listen on the ports the worker does not have yet;
 *            note which sockets carry over. Changes nothing visible.
 *   commit   take the new rules for new connections, move the kept sockets
 *            (their queues go along: a kept port never refuses), start the
 *            new ones, close removed ports, and let the sessions and flows
 *            of removed or changed forwards run on under their old rules.
 *   abort    close what prepare opened.
 *
 * Worker 0 (the main thread) prepares first, so that its probe of a new
 * port runs before others share it. The others prepare at once, answer,
 * and wait for the verdict without returning to their loops, so that
 * nothing a prepare noted can change before the commit (a few
 * milliseconds). Commit follows only if every worker prepared.
 */
static int worker_prepare(struct worker *worker, struct ruleset *rules, char *err, size_t len)
{
	struct relay_ctx *ctx = &worker->ctx;
	worker->next_listeners = listener_set_prepare(ctx, rules, ctx->listeners, err, len);
	if (worker->next_listeners == NULL)
		return -1;
	worker->next_udp = udp_relay_prepare(ctx->udp, rules, err, len);
	if (worker->next_udp == NULL) {
		listener_set_free(worker->next_listeners);
		worker->next_listeners = NULL;
		return -1;
	}
	return 0;
}

static void worker_abort(struct worker *worker)
{
	udp_relay_abort(worker->next_udp);
	listener_set_free(worker->next_listeners);
	worker->next_udp = NULL;
	worker->next_listeners = NULL;
}

/* Arms the timer for the next drain_timeout deadline of old rules, if any. */
static void worker_arm_old_rules_timer(struct worker *worker)
{
	uint64_t next = relay_ctx_next_drain_ms(&worker->ctx);
	uint64_t udp_next = worker->ctx.udp != NULL ? udp_relay_next_drain_ms(worker->ctx.udp) : 0;
	if (udp_next != 0 && (next == 0 || udp_next < next))
		next = udp_next;
	if (next == 0 || worker->old_rules_timer == NULL)
		return;
	uint64_t now = relay_now_ms();
	struct timeval delay = relay_ms_to_timeval(next > now ? next - now : 0);
	event_add(worker->old_rules_timer, &delay);
}

static void worker_on_old_rules_timer(evutil_socket_t fd, short what, void *arg)
{
	struct worker *worker = arg;
	(void)fd, (void)what;
	uint64_t now = relay_now_ms();
	unsigned connections = tcp_sessions_drain_due(&worker->ctx, now);
	unsigned flows = worker->ctx.udp != NULL ? udp_relay_drain_due(worker->ctx.udp, now) : 0;
	if (connections > 0 || flows > 0)
		log_info(NULL, "drain_timeout (%g s) passed: closed %u connection%s and %u udp "
			 "flow%s still on rules a reload removed or changed (worker %u)",
			 worker->ctx.rules->cfg.drain_timeout, connections,
			 connections == 1 ? "" : "s", flows, flows == 1 ? "" : "s", worker->index);
	worker_arm_old_rules_timer(worker);
}

static void worker_commit(struct worker *worker, struct ruleset *rules)
{
	struct relay_ctx *ctx = &worker->ctx;
	if (ctx->rules != rules)
		relay_ctx_set_rules(ctx, rules);
	listener_set_commit(worker->next_listeners, ctx->listeners);
	ctx->listeners = worker->next_listeners;
	udp_relay_commit(ctx->udp, worker->next_udp);
	worker->next_listeners = NULL;
	worker->next_udp = NULL;
	tcp_sessions_follow_rules(ctx);
	relay_ctx_release_unused(ctx);
	worker_arm_old_rules_timer(worker);
}

/* On a worker's own thread: the main thread posted a request. */
static void worker_answer_mail(struct worker *worker)
{
	struct worker_pool *pool = worker->pool;
	pthread_mutex_lock(&pool->mail_lock);
	enum worker_request request = worker->request;
	worker->request = WORKER_NONE;
	pthread_mutex_unlock(&pool->mail_lock);
	if (request != WORKER_PREPARE)
		return;
	char err[sizeof worker->error] = "";
	int result = worker_prepare(worker, pool->next_rules, err, sizeof err);

	pthread_mutex_lock(&pool->mail_lock);
	worker->result = result;
	snprintf(worker->error, sizeof worker->error, "%s", err);
	worker->answered = true;
	pthread_cond_broadcast(&pool->mail_changed);
	if (result < 0) {
		pthread_mutex_unlock(&pool->mail_lock);
		return;
	}
	while (worker->request == WORKER_NONE)
		pthread_cond_wait(&pool->mail_changed, &pool->mail_lock);
	request = worker->request;
	worker->request = WORKER_NONE;
	pthread_mutex_unlock(&pool->mail_lock);

	if (request == WORKER_COMMIT)
		worker_commit(worker, pool->next_rules);
	else
		worker_abort(worker);
	pthread_mutex_lock(&pool->mail_lock);
	worker->answered = true;
	pthread_cond_broadcast(&pool->mail_changed);
	pthread_mutex_unlock(&pool->mail_lock);
}

/* Posts a request to a worker on its own thread; the answer comes through pool->mail. */
static void worker_post(struct worker *worker, enum worker_request request)
{
	struct worker_pool *pool = worker->pool;
	pthread_mutex_lock(&pool->mail_lock);
	worker->request = request;
	worker->answered = false;
	pthread_cond_broadcast(&pool->mail_changed);
	pthread_mutex_unlock(&pool->mail_lock);
	if (request == WORKER_PREPARE) {
		char byte = WORKER_MAIL_BYTE;
		while (write(worker->stop_pipe[1], &byte, 1) < 0 && errno == EINTR)
			;
	}
}

static void worker_wait_answer(struct worker *worker)
{
	struct worker_pool *pool = worker->pool;
	pthread_mutex_lock(&pool->mail_lock);
	while (!worker->answered)
		pthread_cond_wait(&pool->mail_changed, &pool->mail_lock);
	pthread_mutex_unlock(&pool->mail_lock);
}

int worker_pool_reload(struct worker_pool *pool, struct ruleset *rules, char *err, size_t len)
{
	struct worker *first = &pool->workers[0];
	if (worker_prepare(first, rules, err, len) < 0)
		return -1;
	pool->next_rules = rules;
	/* Workers whose thread is not running (none, or stopped) have nothing to apply. */
	for (unsigned i = 1; i < pool->count; i++) {
		if (pool->workers[i].thread_started)
			worker_post(&pool->workers[i], WORKER_PREPARE);
	}
	int result = 0;
	for (unsigned i = 1; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (!worker->thread_started)
			continue;
		worker_wait_answer(worker);
		if (worker->result < 0 && result == 0) {
			snprintf(err, len, "%s", worker->error);
			result = -1;
		}
	}
	enum worker_request verdict = result == 0 ? WORKER_COMMIT : WORKER_ABORT;
	for (unsigned i = 1; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->thread_started && worker->result == 0)
			worker_post(worker, verdict);
	}
	if (verdict == WORKER_COMMIT)
		worker_commit(first, rules);
	else
		worker_abort(first);
	for (unsigned i = 1; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->thread_started && worker->result == 0)
			worker_wait_answer(worker);
	}
	pool->next_rules = NULL;
	if (result < 0)
		return -1;
	pthread_mutex_lock(&pool->rules_lock);
	struct ruleset *old = pool->rules;
	pool->rules = ruleset_ref(rules);
	pthread_mutex_unlock(&pool->rules_lock);
	ruleset_unref(old);
	return 0;
}

struct ruleset *worker_pool_rules(struct worker_pool *pool)
{
	pthread_mutex_lock(&pool->rules_lock);
	struct ruleset *rules = ruleset_ref(pool->rules);
	pthread_mutex_unlock(&pool->rules_lock);
	return rules;
}

void worker_pool_count_reload(struct worker_pool *pool, bool succeeded)
{
	atomic_fetch_add(succeeded ? &pool->reloads_succeeded : &pool->reloads_failed, 1);
}

void worker_pool_reloads(struct worker_pool *pool, uint64_t *succeeded, uint64_t *failed)
{
	*succeeded = atomic_load(&pool->reloads_succeeded);
	*failed = atomic_load(&pool->reloads_failed);
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
	options.sources = pool->sources;
	options.udp_draining = pool->udp_draining;
	options.tcp_open_total = &pool->tcp_open_total;
	options.max_connections = pool->max_connections;
	options.udp_flows_total = &pool->udp_flows_total;
	options.max_udp_flows = pool->max_udp_flows;
	options.udp_ported_total = &pool->udp_ported_total;
	options.max_udp_ported = pool->max_udp_ported;
	options.fd_spare = pool->fd_spare;
	options.fd_reserve = pool->fd_reserve;
	options.tcp_unbudgeted = pool->tcp_unbudgeted;
	return options;
}

int worker_check_transparent(const struct config *cfg, char *err, size_t len)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (!fwd->enabled || !fwd->source_client)
			continue;
		if (cfg->has_user) {
			snprintf(err, len, "%s: forward \"%s\": source = \"client\" needs "
				 "CAP_NET_ADMIN while running, which user = \"%s\" gives up",
				 fwd->origin, fwd->name, cfg->user);
			return -1;
		}
		if (net_transparent_check(net_addr_family(&fwd->internal_addr)) < 0) {
			snprintf(err, len, "%s: forward \"%s\": source = \"client\" cannot work "
				 "here: IP_TRANSPARENT: %s (it needs CAP_NET_ADMIN or CAP_NET_RAW)", fwd->origin,
				 fwd->name, strerror(errno));
			return -1;
		}
	}
	return 0;
}

unsigned long worker_sockets_needed(const struct config *cfg)
{
	unsigned long sockets = 0;
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (fwd->enabled)
			sockets += forward_port_count(fwd) *
				   (unsigned long)(((fwd->proto & FORWARD_TCP) ? 1 : 0) +
						   ((fwd->proto & FORWARD_UDP) ? 1 : 0));
	}
	return sockets;
}

/* The local ports UDP flows may take: net.ipv4.ip_local_port_range's size; 0 if unknown. */
static unsigned long worker_local_ports(void)
{
	FILE *range = fopen("/proc/sys/net/ipv4/ip_local_port_range", "re");
	unsigned low = 0, high = 0;
	bool known = range != NULL && fscanf(range, "%u %u", &low, &high) == 2 && high >= low;
	if (range != NULL)
		fclose(range);
	return known ? high - low + 1 : 0;
}

/*
 * The descriptor budget. Set aside first: every worker's bound sockets, a
 * quarter of its splice pipes (two descriptors each; beyond that a transfer
 * falls back to a buffer when descriptors are short) and a margin for the
 * rest (event loops, the admin endpoint, FTP data listeners, ports a reload
 * adds). What is left, `spare`, is shared: a TCP connection takes two
 * descriptors, a UDP flow one. Either may use all of it but a reserve the
 * other keeps for itself (a tenth each): a flood of one can never take the
 * descriptors the other needs to go on accepting. max_connections caps TCP
 * (automatic: all it may use); UDP flows also stay within 90% of the local
 * port range, since each holds one of its ports.
 */
static void worker_pool_size_budgets(struct worker_pool *pool, const struct config *cfg,
				     unsigned count, unsigned long fd_limit)
{
	struct relay_options one = worker_options(pool, cfg, count, fd_limit, 0);
	unsigned long fixed = worker_sockets_needed(cfg) * count + one.max_pipes / 2ul * count +
			      64 + fd_limit / 32;
	/* A tiny limit (tests use 64) leaves little: still some for each side. */
	unsigned long spare = fd_limit > fixed + fd_limit / 4 ? fd_limit - fixed : fd_limit / 4;
	unsigned long reserve = spare / 10;
	unsigned long connections = (spare - reserve) / 2;
	if (cfg->max_connections != 0) {
		/* As asked, even beyond the budget: then the accept loop's back-off is the bound. */
		if (cfg->max_connections > connections)
			log_warn(NULL, "max_connections %u: only %lu fit the open-files limit %lu "
				 "(two descriptors each, beside listening sockets, pipes and UDP's "
				 "reserve); beyond that, accepting pauses when descriptors run out",
				 cfg->max_connections, connections, fd_limit);
		connections = cfg->max_connections;
		pool->tcp_unbudgeted = true;
	}
	unsigned long flows = spare - reserve;
	/* Flows that take a local port each (not those of source = "client" forwards). */
	unsigned long ported = flows;
	unsigned long ports = worker_local_ports();
	if (ports != 0 && ported > ports * 9 / 10)
		ported = ports * 9 / 10;
	pool->fd_spare = spare > UINT_MAX ? UINT_MAX : (unsigned)spare;
	pool->fd_reserve = reserve > UINT_MAX ? UINT_MAX : (unsigned)reserve;
	pool->max_connections = connections > UINT_MAX ? UINT_MAX : (unsigned)connections;
	pool->max_udp_flows = flows > UINT_MAX ? UINT_MAX : (unsigned)flows;
	pool->max_udp_ported = ported > UINT_MAX ? UINT_MAX : (unsigned)ported;
	log_info(NULL, "admission: up to %u tcp connections and %u udp flows at once, together "
		 "within %lu descriptors of which each keeps %lu for itself (open-files limit %lu)",
		 pool->max_connections, pool->max_udp_ported, spare, reserve, fd_limit);
	if (pool->max_udp_flows > pool->max_udp_ported)
		log_info(NULL, "admission: udp flows of source = \"client\" forwards take no local "
			 "port: up to %u flows with them", pool->max_udp_flows);
}

static int worker_open(struct worker *worker, struct ruleset *rules, unsigned count,
		       unsigned long fd_limit)
{
	const struct config *cfg = &rules->cfg;
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
	if (relay_ctx_init(&worker->ctx, worker->base, worker->index, rules, &options) < 0 ||
	    (worker->ctx.udp = udp_relay_new(&worker->ctx)) == NULL) {
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
	worker->old_rules_timer = evtimer_new(worker->base, worker_on_old_rules_timer, worker);
	if (worker->drain_timer == NULL || worker->old_rules_timer == NULL)
		return -1;
	/* Start-up is a reload from nothing. */
	char err[512];
	if (worker_prepare(worker, rules, err, sizeof err) < 0)
		return -1;
	worker_commit(worker, rules);
	return 0;
}

struct worker_pool *worker_pool_open(struct ruleset *rules, unsigned count,
				     unsigned long fd_limit)
{
	struct worker_pool *pool = calloc(1, sizeof *pool);
	if (pool == NULL)
		return NULL;
	atomic_init(&pool->fd_episode.active, false);
	atomic_init(&pool->fd_episode.started_ms, 0);
	atomic_init(&pool->reloads_succeeded, 0);
	atomic_init(&pool->reloads_failed, 0);
	pthread_mutex_init(&pool->rules_lock, NULL);
	pthread_mutex_init(&pool->mail_lock, NULL);
	pthread_cond_init(&pool->mail_changed, NULL);
	pool->rules = ruleset_ref(rules);
	atomic_init(&pool->tcp_open_total, 0);
	atomic_init(&pool->udp_flows_total, 0);
	atomic_init(&pool->udp_ported_total, 0);
	pool->sources = source_table_new();
	pool->udp_draining = port_claims_new();
	pool->workers = calloc(count, sizeof *pool->workers);
	if (pool->workers == NULL || pool->sources == NULL || pool->udp_draining == NULL) {
		worker_pool_free(pool);
		return NULL;
	}
	worker_pool_size_budgets(pool, &rules->cfg, count, fd_limit);
	/* Workers bind in order, so worker 0's probe runs before anyone shares. */
	for (unsigned i = 0; i < count; i++) {
		struct worker *worker = &pool->workers[pool->count++];
		worker->pool = pool;
		worker->index = i;
		if (worker_open(worker, rules, count, fd_limit) < 0) {
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

void worker_pool_process_counters(const struct worker_pool *pool, struct relay_counters *sum)
{
	memset(sum, 0, sizeof *sum);
	for (unsigned i = 0; i < pool->count; i++)
		relay_counters_add(sum, &pool->workers[i].ctx.process_counters);
}

void worker_pool_counters(struct worker_pool *pool, struct relay_counters *sum)
{
	worker_pool_process_counters(pool, sum);
	struct ruleset *rules = worker_pool_rules(pool);
	for (size_t f = 0; f < rules->cfg.forward_count; f++) {
		struct relay_counters one;
		forward_stats_sum(rules->cfg.forwards[f].stats, &one);
		relay_counters_add(sum, &one);
	}
	ruleset_add_retired_counters(rules, sum);
	ruleset_unref(rules);
}

void worker_pool_close(struct worker_pool *pool)
{
	worker_pool_stop(pool);
	for (unsigned i = 0; i < pool->count; i++) {
		struct worker *worker = &pool->workers[i];
		if (worker->ctx_ready) {
			worker_abort(worker);
			listener_set_free(worker->ctx.listeners);
			worker->ctx.listeners = NULL;
			udp_relay_free(worker->ctx.udp);
			worker->ctx.udp = NULL;
			tcp_sessions_free_all(&worker->ctx);
			relay_ctx_destroy(&worker->ctx);
		}
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
		if (worker->old_rules_timer != NULL)
			event_free(worker->old_rules_timer);
		if (worker->stop_pipe[0] >= 0) {
			close(worker->stop_pipe[0]);
			close(worker->stop_pipe[1]);
		}
		if (worker->base != NULL)
			event_base_free(worker->base);
	}
	free(pool->workers);
	source_table_free(pool->sources);
	port_claims_free(pool->udp_draining);
	ruleset_unref(pool->rules);
	pthread_cond_destroy(&pool->mail_changed);
	pthread_mutex_destroy(&pool->mail_lock);
	pthread_mutex_destroy(&pool->rules_lock);
	free(pool);
}
