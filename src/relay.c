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

#include "portrelay/log.h"

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

/*
 * Every session arms the same two durations: common-timeout queues keep
 * them in order in O(1) instead of the timer heap's O(log n). A reload may
 * change them; sessions armed before keep the old ones.
 */
static void relay_ctx_set_timeouts(struct relay_ctx *ctx)
{
	const struct config *cfg = &ctx->rules->cfg;
	/* Below a millisecond, timers and the idle check round to nothing: clamp. */
	double connect_seconds = cfg->tcp_connect_timeout < 0.001 ? 0.001 : cfg->tcp_connect_timeout;
	double idle_seconds = cfg->tcp_idle_timeout > 0 && cfg->tcp_idle_timeout < 0.001
				      ? 0.001 : cfg->tcp_idle_timeout;
	struct timeval connect_timeout = relay_seconds_to_timeval(connect_seconds);
	const struct timeval *common = event_base_init_common_timeout(ctx->base, &connect_timeout);
	ctx->tcp_connect_timeout = common != NULL ? *common : connect_timeout;
	struct timeval idle_timeout = relay_seconds_to_timeval(idle_seconds);
	common = timerisset(&idle_timeout) ? event_base_init_common_timeout(ctx->base, &idle_timeout)
					   : NULL;
	ctx->tcp_idle_timeout = common != NULL ? *common : idle_timeout;
	ctx->tcp_idle_timeout_ms = (uint64_t)(idle_seconds * 1000.0);
}

int relay_ctx_init(struct relay_ctx *ctx, struct event_base *base, unsigned worker,
		   struct ruleset *rules, const struct relay_options *options)
{
	memset(ctx, 0, sizeof *ctx);
	ctx->base = base;
	ctx->worker = worker;
	ctx->rules = ruleset_ref(rules);
	ctx->options = *options;
	TAILQ_INIT(&ctx->sessions);
	LIST_INIT(&ctx->retired);
	relay_ctx_set_timeouts(ctx);
	return pump_pool_init(&ctx->pumps, options->max_pipes);
}

void relay_ctx_set_rules(struct relay_ctx *ctx, struct ruleset *rules)
{
	/*
	 * The old rules are retired even without users: the modules that move
	 * their sessions and flows onto the new rules release them as they go,
	 * and relay_ctx_release_unused frees what is left unused.
	 */
	struct relay_rules_use *use = calloc(1, sizeof *use);
	if (use == NULL) {
		/* Never free rules under their users: these stay in memory for good. */
		log_warn(NULL, "out of memory: the previous rules stay in memory");
	} else {
		use->rules = ctx->rules;
		use->users = ctx->rules_users;
		use->retiring = true;
		if (rules->cfg.drain_timeout > 0)
			use->drain_deadline_ms =
				relay_now_ms() + (uint64_t)(rules->cfg.drain_timeout * 1000.0);
		LIST_INSERT_HEAD(&ctx->retired, use, link);
	}
	ctx->rules = ruleset_ref(rules);
	ctx->rules_users = 0;
	relay_ctx_set_timeouts(ctx);
}

void relay_ctx_release_unused(struct relay_ctx *ctx)
{
	struct relay_rules_use *use = LIST_FIRST(&ctx->retired), *next;
	for (; use != NULL; use = next) {
		next = LIST_NEXT(use, link);
		use->retiring = false;
		if (use->users == 0) {
			LIST_REMOVE(use, link);
			ruleset_unref(use->rules);
			free(use);
		}
	}
}

struct relay_rules_use *relay_ctx_retired_of(struct relay_ctx *ctx, const struct forward *fwd)
{
	struct relay_rules_use *use;
	LIST_FOREACH(use, &ctx->retired, link) {
		if (ruleset_owns(use->rules, fwd))
			return use;
	}
	return NULL;
}

void relay_ctx_take_forward(struct relay_ctx *ctx, const struct forward *fwd)
{
	if (relay_ctx_is_current(ctx, fwd)) {
		ctx->rules_users++;
		return;
	}
	struct relay_rules_use *use = relay_ctx_retired_of(ctx, fwd);
	if (use != NULL)
		use->users++;
}

void relay_ctx_release_forward(struct relay_ctx *ctx, const struct forward *fwd)
{
	if (relay_ctx_is_current(ctx, fwd)) {
		ctx->rules_users--;
		return;
	}
	struct relay_rules_use *use = relay_ctx_retired_of(ctx, fwd);
	if (use == NULL || --use->users > 0 || use->retiring)
		return;
	LIST_REMOVE(use, link);
	ruleset_unref(use->rules);
	free(use);
}

uint64_t relay_ctx_next_drain_ms(const struct relay_ctx *ctx)
{
	uint64_t next = 0;
	const struct relay_rules_use *use;
	LIST_FOREACH(use, &ctx->retired, link) {
		if (use->drain_deadline_ms != 0 && (next == 0 || use->drain_deadline_ms < next))
			next = use->drain_deadline_ms;
	}
	return next;
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
	uint64_t budget_us = ctx->rules->cfg.busy_poll_us;
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

void relay_ctx_destroy(struct relay_ctx *ctx)
{
	pump_pool_destroy(&ctx->pumps);
	struct relay_rules_use *use;
	while ((use = LIST_FIRST(&ctx->retired)) != NULL) {
		LIST_REMOVE(use, link);
		ruleset_unref(use->rules);
		free(use);
	}
	ruleset_unref(ctx->rules);
	ctx->rules = NULL;
}
