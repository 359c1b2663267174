/*
 * reload.c - reading the configuration again and applying it (reload.h).
 */
#include "portrelay/reload.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

#include "portrelay/log.h"
#include "portrelay/ruleset.h"

/*
 * A setting that cannot change while running: if the new configuration
 * changes it, the running value is kept and the change reported.
 */
static void reload_keep(uint64_t attempt, const char *name, bool changed, const char *was,
			const char *wanted)
{
	if (changed)
		log_warn(NULL, "reload %llu: %s changed (%s -> %s) but needs a restart: keeping %s",
			 (unsigned long long)attempt, name, was, wanted, was);
}

static void reload_keep_unsigned(uint64_t attempt, const char *name, unsigned *wanted,
				 unsigned running)
{
	char was[24], now[24];
	snprintf(was, sizeof was, "%u", running);
	snprintf(now, sizeof now, "%u", *wanted);
	reload_keep(attempt, name, *wanted != running, was, now);
	*wanted = running;
}

static void reload_keep_restart_settings(uint64_t attempt, struct config *cfg,
					 const struct config *running)
{
	reload_keep_unsigned(attempt, "workers", &cfg->workers, running->workers);
	reload_keep_unsigned(attempt, "busy_poll", &cfg->busy_poll_us, running->busy_poll_us);
	/* The descriptor budgets are sized from it at start-up. */
	reload_keep_unsigned(attempt, "max_connections", &cfg->max_connections,
			     running->max_connections);
	/* Root is gone by now: there is no becoming someone else. */
	reload_keep(attempt, "user", strcmp(cfg->user, running->user) != 0,
		    running->has_user ? running->user : "(none)", cfg->has_user ? cfg->user : "(none)");
	reload_keep(attempt, "group", strcmp(cfg->group, running->group) != 0,
		    running->has_group ? running->group : "(none)",
		    cfg->has_group ? cfg->group : "(none)");
	memcpy(cfg->user, running->user, sizeof cfg->user);
	memcpy(cfg->group, running->group, sizeof cfg->group);
	cfg->has_user = running->has_user;
	cfg->has_group = running->has_group;
	cfg->run_uid = running->run_uid;
	cfg->run_gid = running->run_gid;
	reload_keep(attempt, "tcp.splice", cfg->tcp_splice != running->tcp_splice,
		    running->tcp_splice ? "true" : "false", cfg->tcp_splice ? "true" : "false");
	cfg->tcp_splice = running->tcp_splice;
	reload_keep(attempt, "admin.listen", strcmp(cfg->admin_listen, running->admin_listen) != 0,
		    running->admin_listen[0] != '\0' ? running->admin_listen : "(none)",
		    cfg->admin_listen[0] != '\0' ? cfg->admin_listen : "(none)");
	reload_keep(attempt, "admin.token_file",
		    strcmp(cfg->admin_token_file, running->admin_token_file) != 0,
		    running->admin_token_file[0] != '\0' ? running->admin_token_file : "(none)",
		    cfg->admin_token_file[0] != '\0' ? cfg->admin_token_file : "(none)");
	memcpy(cfg->admin_listen, running->admin_listen, sizeof cfg->admin_listen);
	memcpy(cfg->admin_token_file, running->admin_token_file, sizeof cfg->admin_token_file);
	cfg->admin_unix = running->admin_unix;
	cfg->admin_addr = running->admin_addr;
}

struct reload_diff {
	unsigned added, removed, changed, unchanged;
	size_t enabled;
};

static struct reload_diff reload_compare(const struct config *cfg, const struct ruleset *running)
{
	struct reload_diff diff = { 0 };
	for (size_t i = 0; i < cfg->forward_count; i++) {
		const struct forward *fwd = &cfg->forwards[i];
		if (!fwd->enabled)
			continue;
		diff.enabled++;
		const struct forward *before = ruleset_find_place(running, fwd);
		if (before == NULL)
			diff.added++;
		else if (forward_same_rule(before, fwd))
			diff.unchanged++;
		else
			diff.changed++;
	}
	for (size_t i = 0; i < running->cfg.forward_count; i++) {
		const struct forward *fwd = &running->cfg.forwards[i];
		if (!fwd->enabled)
			continue;
		bool found = false;
		for (size_t j = 0; j < cfg->forward_count && !found; j++)
			found = cfg->forwards[j].enabled && forward_same_place(&cfg->forwards[j], fwd);
		diff.removed += !found;
	}
	return diff;
}

/* Logs each forward the reload adds or changes, as start-up does. */
static void reload_log_forwards(const struct ruleset *rules, const struct ruleset *running)
{
	for (size_t i = 0; i < rules->cfg.forward_count; i++) {
		const struct forward *fwd = &rules->cfg.forwards[i];
		const struct forward *before = ruleset_find_place(running, fwd);
		if (!fwd->enabled || (before != NULL && forward_same_rule(before, fwd)))
			continue;
		char line[1024];
		log_info(NULL, "forward %s%s", forward_describe(fwd, line, sizeof line),
			 before != NULL ? " (changed)" : " (added)");
	}
}

/*
 * Puts the candidate rules file in place of admin.rules_file once its rules
 * run: a rename in the same directory, then the directory synced, so that
 * a crash leaves the old file or the new one, never a mix.
 */
static int reload_commit_candidate(const char *candidate, const char *path, char *err,
				   size_t err_len)
{
	if (rename(candidate, path) < 0) {
		snprintf(err, err_len, "cannot rename %s to %s: %s", candidate, path,
			 strerror(errno));
		return -1;
	}
	char dir[CONFIG_ORIGIN_MAX];
	snprintf(dir, sizeof dir, "%s", path);
	char *slash = strrchr(dir, '/');
	if (slash == dir)
		slash[1] = '\0';
	else if (slash != NULL)
		*slash = '\0';
	else
		snprintf(dir, sizeof dir, ".");
	int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0) {
		if (fsync(fd) < 0)
			log_warn(NULL, "admin.rules_file: cannot sync the directory %s: %s", dir,
				 strerror(errno));
		close(fd);
	}
	return 0;
}

int reload_run(struct reloader *reloader)
{
	char err[1024];
	return reload_run_candidate(reloader, NULL, err, sizeof err) == RELOAD_APPLIED ? 0 : -1;
}

enum reload_result reload_run_candidate(struct reloader *reloader, const char *candidate,
					char *err, size_t err_len)
{
	uint64_t attempt = ++reloader->attempts;
	struct config cfg;
	struct ruleset *running = worker_pool_rules(reloader->pool);
	struct ruleset *rules = NULL;
	struct config_sources sources = *reloader->sources;
	enum reload_result result = RELOAD_CONFIG_FAILED;

	sources.rules_file_read = candidate;
	if (candidate != NULL && running->cfg.admin_rules_file[0] == '\0') {
		snprintf(err, err_len, "admin.rules_file is not set: there is nowhere to keep "
			 "rules made through the API");
		goto fail;
	}
	if (config_load_sources(&cfg, &sources, err, err_len) < 0)
		goto fail;
	reload_keep_restart_settings(attempt, &cfg, &running->cfg);
	if (candidate != NULL && strcmp(cfg.admin_rules_file, running->cfg.admin_rules_file) != 0) {
		snprintf(err, err_len, "admin.rules_file changed in the configuration file (%s "
			 "-> %s): send SIGHUP first", running->cfg.admin_rules_file,
			 cfg.admin_rules_file);
		config_free(&cfg);
		goto fail;
	}
	if (worker_check_transparent(&cfg, err, err_len) < 0) {
		config_free(&cfg);
		goto fail;
	}
	struct reload_diff diff = reload_compare(&cfg, running);
	if (diff.enabled == 0 && cfg.admin_listen[0] == '\0') {
		/*
		 * As at start-up (where the admin endpoint, and rules from its page,
		 * make none a valid start); and a file caught half-written must not
		 * remove every forward.
		 */
		snprintf(err, err_len, "no enabled forward: nothing to do");
		config_free(&cfg);
		goto fail;
	}
	rules = ruleset_new(&cfg, running, reloader->workers);
	if (rules == NULL) {
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	result = RELOAD_APPLY_FAILED;
	if (worker_pool_reload(reloader->pool, rules, err, err_len) < 0)
		goto fail;
	if (candidate != NULL &&
	    reload_commit_candidate(candidate, rules->cfg.admin_rules_file, err, err_len) < 0) {
		/* Running, but not kept: back to what the file on disk holds. */
		log_error(NULL, "reload %llu: %s; reloading the previous rules",
			  (unsigned long long)attempt, err);
		worker_pool_count_reload(reloader->pool, true);
		ruleset_unref(rules);
		ruleset_unref(running);
		reload_run(reloader);
		return RELOAD_COMMIT_FAILED;
	}

	if (!reloader->log_level_fixed)
		log_set_level(rules->cfg.log_level);
	reload_log_forwards(rules, running);
	log_info(NULL, "reload %llu: applied%s: %zu forward%s enabled (%u added, %u removed, "
		 "%u changed, %u unchanged)", (unsigned long long)attempt,
		 candidate != NULL ? " (a change through the admin API)" : "", diff.enabled,
		 diff.enabled == 1 ? "" : "s", diff.added, diff.removed, diff.changed,
		 diff.unchanged);
	worker_pool_count_reload(reloader->pool, true);
	ruleset_unref(rules);
	ruleset_unref(running);
	return RELOAD_APPLIED;
fail:
	log_error(NULL, "reload %llu: failed%s, the running rules stay: %s",
		  (unsigned long long)attempt,
		  candidate != NULL ? " (a change through the admin API)" : "", err);
	worker_pool_count_reload(reloader->pool, false);
	ruleset_unref(rules);
	ruleset_unref(running);
	return result;
}
