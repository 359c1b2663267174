/*
 * reload.h - SIGHUP: read the configuration again from the sources the
 * process started with, and apply it by difference (worker_pool_reload).
 *
 * A reload that fails (a bad file, a port that cannot be bound, no memory)
 * changes nothing: the running rules stay, and the error is logged, with
 * FILE:LINE for the file, and counted (portrelay_reloads_total). Settings
 * that cannot change while running (workers, tcp.splice, busy_poll, the
 * admin endpoint) keep their running values, each reported as needing a
 * restart; everything else, the forwards above all, takes effect.
 */
#ifndef PORTRELAY_RELOAD_H
#define PORTRELAY_RELOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "portrelay/config.h"
#include "portrelay/worker.h"

struct reloader {
	const struct config_sources *sources;
	struct worker_pool *pool;
	unsigned workers;              /* running: the ruleset's counter blocks per forward */
	bool log_level_fixed;          /* -l given: the file's log_level does not apply */
	uint64_t attempts;             /* numbers the reloads in the log */
};

/* One reload; 0 when applied, -1 when it failed (logged and counted). */
int reload_run(struct reloader *reloader);

enum reload_result {
	RELOAD_APPLIED = 0,
	RELOAD_CONFIG_FAILED = -1,   /* the configuration is refused: nothing changed */
	RELOAD_APPLY_FAILED = -2,    /* a port could not be bound (rolled back): nothing changed */
	RELOAD_COMMIT_FAILED = -3,   /* the candidate could not be put in place: reverted */
};

/*
 * A reload for the Port Forwarding API: as reload_run, but reading the file
 * candidate (written next to admin.rules_file) in admin.rules_file's stead;
 * once its rules run, candidate is renamed onto admin.rules_file. Any
 * failure leaves the running rules and admin.rules_file as they were, and
 * puts the reason in err. Runs on the main thread, as reload_run does.
 */
enum reload_result reload_run_candidate(struct reloader *reloader, const char *candidate,
					char *err, size_t err_len);

#endif
