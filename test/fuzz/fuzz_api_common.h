/*
 * fuzz_api_common.h - what fuzz_api and fuzz_admin share: a resolver that
 * never reaches DNS, and the Port Forwarding API's apply function as the
 * targets give it (the candidate rules file checked, never applied).
 *
 * Host names. An API rule's internal_ip may be a host name, which
 * config_read_forward resolves with getaddrinfo: on a machine without DNS
 * every lookup of a name not in /etc/hosts may wait for the resolver's
 * timeouts (seconds), and a real lookup makes an input's result depend on
 * the network. Filtering inputs (only numeric internal_ip let through)
 * would hide from the fuzzer the paths that matter most here: a name that
 * does not resolve (400, field internal_ip), a name written to the rules
 * file and read back. So, as fuzz_config does (-Dgetaddrinfo=...), the
 * targets compile every source with -Dgetaddrinfo=fuzz_getaddrinfo, and
 * fuzz_getaddrinfo below answers from a fixed table, at once and the same
 * way every time: numeric addresses as themselves, "localhost" as
 * 127.0.0.1 or ::1, any name under the reserved .test domain (RFC 2606) as
 * 192.0.2.1 or 2001:db8::1, every other name "Name or service not known".
 * Its answers come from the real getaddrinfo with AI_NUMERICHOST (no
 * lookup), so the real freeaddrinfo frees them.
 *
 * Applying. api.h's apply function runs a reload with the candidate file
 * the API wrote. The workers' loops never run in the targets (a reload would
 * wait for them forever), so fuzz_apply never reloads: it checks the
 * property that matters, that the candidate reads back through the file's
 * own reader (config_load_rules_file) and completes (config_finish_forward
 * for every forward, no two enabled forwards overlapping), aborting when it
 * does not: the API checked the rule as the reader does, so the file it
 * writes must be readable, or the next SIGHUP or restart would refuse it.
 * Then it answers a failure (the caller picks which: fuzz_apply_result), so
 * nothing is ever committed: the API must then answer with the matching
 * status and delete the candidate, which the targets check.
 */
#ifndef PORTRELAY_FUZZ_API_COMMON_H
#define PORTRELAY_FUZZ_API_COMMON_H

#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <unistd.h>

#include "portrelay/api.h"
#include "portrelay/config.h"
#include "portrelay/reload.h"
#include "config_internal.h"

#include "fuzz_check.h"

/* ---- the resolver ----------------------------------------------------- */

/* getaddrinfo is a macro for fuzz_getaddrinfo in every file: the real one, by hand. */
#undef getaddrinfo
extern int getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		       struct addrinfo **res);

int fuzz_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		     struct addrinfo **res);

static bool fuzz_name_ends_with(const char *name, const char *suffix)
{
	size_t n = strlen(name), s = strlen(suffix);
	return n > s && strcasecmp(name + n - s, suffix) == 0;
}

int fuzz_getaddrinfo(const char *node, const char *service, const struct addrinfo *hints,
		     struct addrinfo **res)
{
	struct addrinfo numeric = { .ai_family = AF_UNSPEC };
	if (hints != NULL)
		numeric = *hints;
	numeric.ai_flags |= AI_NUMERICHOST;
	if (node == NULL)
		return getaddrinfo(node, service, &numeric, res);
	int family = numeric.ai_family;
	const char *as = NULL;
	if (strcasecmp(node, "localhost") == 0 || strcasecmp(node, "localhost.") == 0)
		as = family == AF_INET6 ? "::1" : "127.0.0.1";
	else if (fuzz_name_ends_with(node, ".test") || fuzz_name_ends_with(node, ".test."))
		as = family == AF_INET6 ? "2001:db8::1" : "192.0.2.1";
	if (as != NULL)
		return getaddrinfo(as, service, &numeric, res);
	/* Numeric text resolves as itself (AI_NUMERICHOST: never a lookup). */
	int rc = getaddrinfo(node, service, &numeric, res);
	return rc == 0 ? 0 : EAI_NONAME;
}

/* ---- the apply function ----------------------------------------------- */

/* What apply answers: the API must turn each into its status. */
enum fuzz_apply_result {
	FUZZ_APPLY_CONFIG_FAILED,   /* 409 */
	FUZZ_APPLY_APPLY_FAILED,    /* 409, field external_port unless a DELETE */
	FUZZ_APPLY_COMMIT_FAILED,   /* 500 */
	FUZZ_APPLY_STOPPING,        /* 503 */
};

struct fuzz_apply {
	char config_path[160];      /* the -c file (naming admin.rules_file) */
	char rules_file[160];
	enum fuzz_apply_result result;   /* what the next call answers */
	unsigned calls;
	/* Optional: a check of the candidate's rules (cfg finished), by the target. */
	void (*check)(const struct config *cfg, void *arg);
	void *check_arg;
};

static void fuzz_show_file(const char *path)
{
	FILE *f = fopen(path, "r");
	char line[512];
	fprintf(stderr, "---- %s\n", path);
	while (f != NULL && fgets(line, sizeof line, f) != NULL)
		fputs(line, stderr);
	if (f != NULL)
		fclose(f);
	fprintf(stderr, "----\n");
}

static int fuzz_apply_result_code(enum fuzz_apply_result result)
{
	switch (result) {
	case FUZZ_APPLY_APPLY_FAILED: return RELOAD_APPLY_FAILED;
	case FUZZ_APPLY_COMMIT_FAILED: return RELOAD_COMMIT_FAILED;
	case FUZZ_APPLY_STOPPING: return API_APPLY_STOPPING;
	case FUZZ_APPLY_CONFIG_FAILED:
	default: return RELOAD_CONFIG_FAILED;
	}
}

/* The status the API must answer for it. */
static int fuzz_apply_status(enum fuzz_apply_result result)
{
	switch (result) {
	case FUZZ_APPLY_COMMIT_FAILED: return 500;
	case FUZZ_APPLY_STOPPING: return 503;
	default: return 409;
	}
}

/*
 * Reads the configuration as a reload with the candidate would (the -c
 * file, then the candidate in admin.rules_file's stead) and completes every
 * forward; aborts, showing the candidate, if the reader refuses what the API
 * wrote.
 */
static int fuzz_apply(void *arg, const char *candidate, char *err, size_t err_len)
{
	struct fuzz_apply *fa = arg;
	struct config cfg;
	char why[1024];
	size_t rules_len = strlen(fa->rules_file);

	fa->calls++;
	/* Beside the file, under the name the API's cleanup and ours look for. */
	CHECK(strncmp(candidate, fa->rules_file, rules_len) == 0 &&
	      strncmp(candidate + rules_len, ".new-", 5) == 0);
	config_defaults(&cfg);
	if (config_load_file(&cfg, fa->config_path, why, sizeof why) < 0) {
		fprintf(stderr, "fuzz setup: the configuration file no longer loads: %s\n", why);
		abort();
	}
	if (config_load_rules_file(&cfg, cfg.admin_rules_file, candidate, why, sizeof why) < 0) {
		fprintf(stderr, "the rules file the API wrote is refused by the file's reader: "
			"%s\n", why);
		fuzz_show_file(candidate);
		abort();
	}
	for (size_t i = 0; i < cfg.forward_count; i++) {
		if (config_finish_forward(&cfg, &cfg.forwards[i], why, sizeof why, NULL) < 0) {
			fprintf(stderr, "a forward of the rules file the API wrote does not "
				"complete: %s\n", why);
			fuzz_show_file(candidate);
			abort();
		}
	}
	/* The API refuses overlaps with every running rule; the file had none. */
	for (size_t i = 0; i < cfg.forward_count; i++) {
		for (size_t j = i + 1; j < cfg.forward_count; j++) {
			if (forward_overlaps(&cfg.forwards[i], &cfg.forwards[j])) {
				fprintf(stderr, "the rules file the API wrote has overlapping "
					"forwards \"%s\" (%s) and \"%s\" (%s)\n",
					cfg.forwards[i].name, cfg.forwards[i].origin,
					cfg.forwards[j].name, cfg.forwards[j].origin);
				fuzz_show_file(candidate);
				abort();
			}
			/* The API refuses a name taken (409): every rule keeps its own. */
			if (strcmp(cfg.forwards[i].name, cfg.forwards[j].name) == 0) {
				fprintf(stderr, "the rules file the API wrote has two rules named "
					"\"%s\" (%s, %s)\n", cfg.forwards[i].name,
					cfg.forwards[i].origin, cfg.forwards[j].origin);
				fuzz_show_file(candidate);
				abort();
			}
		}
	}
	if (fa->check != NULL)
		fa->check(&cfg, fa->check_arg);
	config_free(&cfg);
	snprintf(err, err_len, "the fuzzer applies nothing");
	return fuzz_apply_result_code(fa->result);
}

/* Whether a candidate (FILE.new-XXXXXX) is left in dir. */
static bool fuzz_candidate_left(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	bool found = false;
	while (d != NULL && (e = readdir(d)) != NULL) {
		if (strstr(e->d_name, ".new-") != NULL) {
			fprintf(stderr, "left in %s: %s\n", dir, e->d_name);
			found = true;
		}
	}
	if (d != NULL)
		closedir(d);
	return found;
}

/* A file's bytes (at most len), its length; -1 when unreadable. */
static long fuzz_read_file(const char *path, char *buf, size_t len)
{
	FILE *f = fopen(path, "rb");
	if (f == NULL)
		return -1;
	size_t n = fread(buf, 1, len, f);
	fclose(f);
	return (long)n;
}


/* Set-up failed: say what, and stop (no input has run yet). */
static inline void fuzz_die(const char *target, const char *what)
{
	fprintf(stderr, "%s setup: %s: %s\n", target, what, strerror(errno));
	exit(1);
}

/* A whole file written, or fuzz_die. */
static inline void fuzz_write_file(const char *target, const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0)
		fuzz_die(target, path);
}

/*
 * A port free for TCP and UDP on 127.0.0.1: preferred when it is free
 * (0: none), else one the kernel picks; 0 when none could be had.
 */
static inline unsigned fuzz_free_port(unsigned preferred)
{
	for (int attempt = 0; attempt < 50; attempt++) {
		int t = socket(AF_INET, SOCK_STREAM, 0), u = socket(AF_INET, SOCK_DGRAM, 0);
		struct sockaddr_in sin = { .sin_family = AF_INET,
					   .sin_port = htons(attempt == 0 ? preferred : 0),
					   .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
		socklen_t len = sizeof sin;
		unsigned port = 0;
		if (t >= 0 && u >= 0 && bind(t, (struct sockaddr *)&sin, sizeof sin) == 0 &&
		    getsockname(t, (struct sockaddr *)&sin, &len) == 0 &&
		    bind(u, (struct sockaddr *)&sin, sizeof sin) == 0)
			port = ntohs(sin.sin_port);
		if (t >= 0)
			close(t);
		if (u >= 0)
			close(u);
		if (port != 0)
			return port;
	}
	return 0;
}

/* A directory of the target's and the files in it. */
static inline void fuzz_remove_dir(const char *d)
{
	DIR *dd = opendir(d);
	struct dirent *e;
	char path[400];
	while (dd != NULL && (e = readdir(dd)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof path, "%s/%s", d, e->d_name);
		unlink(path);
	}
	if (dd != NULL)
		closedir(dd);
	rmdir(d);
}

/*
 * A run that crashed (a broken check aborts) leaves its directory behind:
 * those of processes that are gone, BASE/PREFIX.PID.*, go.
 */
static inline void fuzz_remove_stale_dirs(const char *base, const char *prefix)
{
	DIR *d = opendir(base);
	struct dirent *e;
	size_t prefix_len = strlen(prefix);
	while (d != NULL && (e = readdir(d)) != NULL) {
		long pid;
		char rest[32], path[300];
		if (strncmp(e->d_name, prefix, prefix_len) != 0 || e->d_name[prefix_len] != '.' ||
		    sscanf(e->d_name + prefix_len + 1, "%ld.%31s", &pid, rest) != 2 || pid <= 0 ||
		    kill((pid_t)pid, 0) == 0 || errno != ESRCH)
			continue;
		snprintf(path, sizeof path, "%s/%s", base, e->d_name);
		fuzz_remove_dir(path);
	}
	if (d != NULL)
		closedir(d);
}

#endif
