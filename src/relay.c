/*
 * relay.c - the relay context: what one event loop owns.
 */
#include "portrelay/relay.h"

#include <event2/event.h>

#include <assert.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "portrelay/listener.h"
#include "portrelay/log.h"
#include "portrelay/tcp_relay.h"
#include "portrelay/udp_relay.h"

struct timeval relay_seconds_to_timeval(double seconds)
{
	struct timeval tv = { 0, 0 };
	if (seconds > 0) {
		double whole = floor(seconds);
		tv.tv_sec = (time_t)whole;
		tv.tv_usec = (suseconds_t)((seconds - whole) * 1e6);
	}
	return tv;
}

struct timeval relay_ms_to_timeval(uint64_t ms)
{
	struct timeval tv = { .tv_sec = (time_t)(ms / 1000), .tv_usec = (suseconds_t)(ms % 1000) * 1000 };
	return tv;
}

uint64_t relay_now_ms(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC_COARSE, &now);
	return (uint64_t)now.tv_sec * 1000 + (uint64_t)now.tv_nsec / 1000000;
}

int relay_ctx_init(struct relay_ctx *ctx, struct event_base *base, const struct config *cfg,
		    const struct relay_options *options)
{
	memset(ctx, 0, sizeof *ctx);
	ctx->base = base;
	ctx->config = cfg;
	ctx->options = *options;

	TAILQ_INIT(&ctx->sessions);
	ctx->forward_counters = calloc(cfg->forward_count + 1, sizeof *ctx->forward_counters);
	if (ctx->forward_counters == NULL)
		return -1;
	/*
	 * Every session arms the same two durations: common-timeout queues keep
	 * them in order in O(1) instead of the timer heap's O(log n).
	 */
	/* Below a millisecond, timers and the idle check round to nothing: clamp. */
	double connect_seconds = cfg->tcp_connect_timeout < 0.001 ? 0.001 : cfg->tcp_connect_timeout;
	double idle_seconds = cfg->tcp_idle_timeout > 0 && cfg->tcp_idle_timeout < 0.001
				      ? 0.001 : cfg->tcp_idle_timeout;
	struct timeval connect_timeout = relay_seconds_to_timeval(connect_seconds);
	const struct timeval *common = event_base_init_common_timeout(base, &connect_timeout);
	ctx->tcp_connect_timeout = common != NULL ? *common : connect_timeout;
	struct timeval idle_timeout = relay_seconds_to_timeval(idle_seconds);
	common = timerisset(&idle_timeout) ? event_base_init_common_timeout(base, &idle_timeout)
					   : NULL;
	ctx->tcp_idle_timeout = common != NULL ? *common : idle_timeout;
	ctx->tcp_idle_timeout_ms = (uint64_t)(idle_seconds * 1000.0);
	return pump_pool_init(&ctx->pumps, options->max_pipes);
}

void relay_counters_add(struct relay_counters *sum, const struct relay_counters *c)
{
	/* Every field is a uint64_t (checked below): walk them as an array. */
	static_assert(sizeof(struct relay_counters) % sizeof(uint64_t) == 0,
		      "struct relay_counters holds uint64_t fields only");
	uint64_t *to = (uint64_t *)sum;
	const uint64_t *from = (const uint64_t *)c;
	for (size_t i = 0; i < sizeof *c / sizeof(uint64_t); i++)
		to[i] += __atomic_load_n(&from[i], __ATOMIC_RELAXED);
}

void relay_ctx_free_counters(struct relay_ctx *ctx)
{
	free(ctx->forward_counters);
	ctx->forward_counters = NULL;
}

int relay_ctx_open(struct relay_ctx *ctx)
{
	ctx->listeners = listener_set_open(ctx);
	if (ctx->listeners == NULL)
		return -1;
	ctx->udp = udp_relay_open(ctx);
	return ctx->udp != NULL ? 0 : -1;
}

static uint64_t relay_now_us(void)
{
	struct timespec now;
	clock_gettime(CLOCK_MONOTONIC, &now);
	return (uint64_t)now.tv_sec * 1000000 + (uint64_t)now.tv_nsec / 1000;
}

/*
 * Busy polling trades CPU for latency: a thread asleep in epoll_wait() is
 * woken by an inter-processor interrupt, which on a virtual machine costs
 * tens of microseconds per wake-up, several times per relayed round trip.
 * While traffic keeps coming, polling without a timeout skips those
 * wake-ups. Once the sockets have been quiet for busy_poll_us the loop
 * blocks again, so an idle relay costs no CPU.
 */
static bool relay_ctx_poll_busily(struct relay_ctx *ctx, uint64_t budget_us)
{
	uint64_t seen = ctx->activity;
	uint64_t deadline = relay_now_us() + budget_us;
	do {
		event_base_loop(ctx->base, EVLOOP_NONBLOCK);
		if (event_base_got_break(ctx->base) || event_base_got_exit(ctx->base))
			return false;
		if (ctx->activity != seen) {
			seen = ctx->activity;
			deadline = relay_now_us() + budget_us;
		}
	} while (relay_now_us() < deadline);
	return true;
}

void relay_ctx_run(struct relay_ctx *ctx)
{
	uint64_t budget_us = ctx->config->busy_poll_us;
	if (budget_us == 0) {
		event_base_dispatch(ctx->base);
		return;
	}
	for (;;) {
		/*
		 * Sleep until something happens, then poll while traffic goes on.
		 * A wake-up for a timer or a signal alone goes back to sleep.
		 */
		uint64_t before = ctx->activity;
		if (event_base_loop(ctx->base, EVLOOP_ONCE) != 0)
			return;   /* an error, or nothing left to wait for */
		if (event_base_got_break(ctx->base) || event_base_got_exit(ctx->base))
			return;
		if (ctx->activity != before && !relay_ctx_poll_busily(ctx, budget_us))
			return;
	}
}

void relay_ctx_close(struct relay_ctx *ctx)
{
	listener_set_free(ctx->listeners);
	ctx->listeners = NULL;
	udp_relay_free(ctx->udp);
	ctx->udp = NULL;
	struct tcp_session *session;
	while ((session = TAILQ_FIRST(&ctx->sessions)) != NULL)
		tcp_session_free(session);
	pump_pool_destroy(&ctx->pumps);
}

