/*
 * main.c - command line, start-up, signals and shutdown; nothing else.
 */
#include <errno.h>
#include <event2/event.h>
#include <getopt.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <grp.h>
#include <unistd.h>

#include "portrelay/admin.h"
#include "portrelay/api.h"
#include "portrelay/cross_call.h"
#include "portrelay/config.h"
#include "portrelay/listener.h"
#include "portrelay/log.h"
#include "portrelay/notify.h"
#include "portrelay/relay.h"
#include "portrelay/reload.h"
#include "portrelay/ruleset.h"
#include "portrelay/udp_relay.h"
#include "portrelay/worker.h"

#define DEFAULT_CONFIG_PATH "/etc/portrelay.conf"

enum exit_code {
	EXIT_OK = 0,
	EXIT_CONFIG = 1,   /* invalid configuration or a port that cannot be bound */
	EXIT_USAGE = 2,
};

struct options {
	const char *config_path;   /* NULL: none given */
	const char **specs;        /* -L, in order */
	size_t spec_count;
	bool check_only;
	bool log_level_given;
	enum log_level log_level;
};

static void print_usage(FILE *out)
{
	fprintf(out,
		"Usage: portrelay [-c FILE] [-L SPEC]... [-t] [-l LEVEL] [-V] [-h]\n"
		"Forward TCP and UDP ports to internal hosts, in userspace.\n"
		"\n"
		"  -c, --config FILE    configuration file (libconfig syntax)\n"
		"  -L, --forward SPEC   add a forward without a config file; repeatable\n"
		"  -t, --check          validate the configuration, print the forwards it\n"
		"                       would open, exit\n"
		"  -l, --log-level LVL  error | warn | info | debug   (default info)\n"
		"  -V, --version        print the version and exit\n"
		"  -h, --help           print usage and exit\n"
		"\n"
		"SPEC is PROTO:[EXT_ADDR:]EXT_PORT[-EXT_END]:INT_HOST:INT_PORT[-INT_END]\n"
		"  PROTO is tcp, udp or both; IPv6 addresses go in brackets:\n"
		"  portrelay -L tcp:8080:127.0.0.1:80 -L udp:[::1]:5353:[fd00::5]:53\n"
		"\n"
		"With neither -c nor -L, it reads " DEFAULT_CONFIG_PATH ".\n");
}

static int usage_error(const char *what, const char *detail)
{
	fprintf(stderr, "portrelay: %s%s; try 'portrelay --help'\n", what, detail);
	return EXIT_USAGE;
}

/* Returns -1 to go on, or the exit code when the process should stop now. */
static int parse_options(int argc, char **argv, struct options *opts)
{
	static const struct option long_options[] = {
		{ "config", required_argument, NULL, 'c' },
		{ "forward", required_argument, NULL, 'L' },
		{ "check", no_argument, NULL, 't' },
		{ "log-level", required_argument, NULL, 'l' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};

	opterr = 0;   /* our own one-line message below instead of getopt's */
	int opt;
	while ((opt = getopt_long(argc, argv, ":c:L:tl:Vh", long_options, NULL)) != -1) {
		switch (opt) {
		case 'c':
			if (opts->config_path != NULL)
				return usage_error("-c given twice", "");
			opts->config_path = optarg;
			break;
		case 'L':
			opts->specs[opts->spec_count++] = optarg;
			break;
		case 't':
			opts->check_only = true;
			break;
		case 'l':
			if (log_level_parse(optarg, &opts->log_level) < 0)
				return usage_error("log level must be error, warn, info or debug, not ",
						   optarg);
			opts->log_level_given = true;
			break;
		case 'V':
			printf("portrelay %s\n", PORTRELAY_VERSION);
			return EXIT_OK;
		case 'h':
			print_usage(stdout);
			return EXIT_OK;
		case ':':
			return usage_error("missing argument for ", argv[optind - 1]);
		default:
			return usage_error("unknown option ", argv[optind - 1]);
		}
	}
	if (optind < argc)
		return usage_error("unexpected argument ", argv[optind]);
	return -1;
}

/* The sources start-up reads, and every reload again. */
static struct config_sources config_sources_of(const struct options *opts)
{
	struct config_sources sources = {
		.path = opts->config_path,
		.specs = opts->specs,
		.spec_count = opts->spec_count,
	};
	if (sources.path == NULL && sources.spec_count == 0)
		sources.path = DEFAULT_CONFIG_PATH;
	return sources;
}

static int load_config(const struct config_sources *sources, struct config *cfg)
{
	char err[1024];
	if (config_load_sources(cfg, sources, err, sizeof err) < 0) {
		fprintf(stderr, "portrelay: %s\n", err);
		return -1;
	}
	return 0;
}

static size_t count_enabled(const struct config *cfg)
{
	size_t enabled = 0;
	for (size_t i = 0; i < cfg->forward_count; i++)
		enabled += cfg->forwards[i].enabled;
	return enabled;
}

/* One line per enabled forward: on stdout for --check, else in the log. */
static void show_forwards(const struct config *cfg, bool to_log)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		char line[1024];
		if (!cfg->forwards[i].enabled)
			continue;
		forward_describe(&cfg->forwards[i], line, sizeof line);
		if (to_log)
			log_info(NULL, "forward %s", line);
		else
			printf("%s\n", line);
	}
}

/*
 * Every connection costs two descriptors; the default soft limit (often
 * 1024) would cap the relay at a few hundred clients. Returns the limit.
 */
static unsigned long raise_fd_limit(void)
{
	struct rlimit limit;
	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		return 1024;
	if (limit.rlim_cur < limit.rlim_max) {
		limit.rlim_cur = limit.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &limit) < 0)
			log_warn(NULL, "cannot raise the open-files limit: %s", strerror(errno));
	}
	getrlimit(RLIMIT_NOFILE, &limit);
	log_info(NULL, "open-files limit %llu: room for about %llu connections",
		 (unsigned long long)limit.rlim_cur, (unsigned long long)limit.rlim_cur / 2);
	return (unsigned long)limit.rlim_cur;
}

/*
 * workers = 0 means one per CPU. Every worker binds every port, so a huge
 * range times many workers could eat the descriptors meant for
 * connections: keep the bound sockets to at most half the limit.
 */
static unsigned choose_workers(const struct config *cfg, unsigned long fd_limit)
{
	long cpus = sysconf(_SC_NPROCESSORS_ONLN);
	unsigned wanted = cfg->workers != 0 ? cfg->workers : (cpus > 0 ? (unsigned)cpus : 1);
	unsigned long sockets = worker_sockets_needed(cfg);
	unsigned long affordable = sockets > 0 ? (fd_limit / 2) / sockets : wanted;
	if (affordable < 1)
		affordable = 1;
	if (wanted > affordable) {
		log_warn(NULL, "%u workers would bind %lu sockets each, too many for the open-files "
			 "limit %lu: using %lu", wanted, sockets, fd_limit, affordable);
		wanted = (unsigned)affordable;
	}
	return wanted;
}

/*
 * user / group: once every socket is bound (ports below 1024 need root or
 * CAP_NET_BIND_SERVICE), give up root for good: supplementary groups, then
 * the group, then the user, each real, effective and saved, and check that
 * it held (and that root cannot be had back). A relay told to drop that
 * cannot does not run on as root: -1.
 */
static int drop_privileges(const struct config *cfg)
{
	if (!cfg->has_user && !cfg->has_group)
		return 0;
	gid_t gid = cfg->run_gid;
	uid_t uid = cfg->has_user ? cfg->run_uid : geteuid();
	if (setgroups(1, &gid) < 0 && !(errno == EPERM && getegid() == gid))
		goto fail;
	if (setresgid(gid, gid, gid) < 0 || setresuid(uid, uid, uid) < 0)
		goto fail;
	uid_t ruid, euid, suid;
	gid_t rgid, egid, sgid;
	if (getresuid(&ruid, &euid, &suid) < 0 || getresgid(&rgid, &egid, &sgid) < 0 ||
	    ruid != uid || euid != uid || suid != uid || rgid != gid || egid != gid || sgid != gid ||
	    (uid != 0 && setuid(0) == 0)) {
		errno = EPERM;
		goto fail;
	}
	log_info(NULL, "running as user %s (uid %u), group %s (gid %u)",
		 cfg->has_user ? cfg->user : "(unchanged)", (unsigned)uid,
		 cfg->has_group ? cfg->group : "(the user's)", (unsigned)gid);
	return 0;
fail:
	log_error(NULL, "cannot run as user %s (uid %u), group %s (gid %u): %s; not running on "
		  "with the privileges it was started with", cfg->has_user ? cfg->user : "(unchanged)",
		  (unsigned)uid, cfg->has_group ? cfg->group : "(the user's)", (unsigned)gid,
		  strerror(errno));
	return -1;
}

/* What the signal handlers of the running relay work on. */
struct service {
	struct worker_pool *pool;
	struct reloader reloader;
	struct notify *notify;
	struct cross_call *calls;  /* the admin thread's changes, run on this thread */
	char status[256];          /* the STATUS= line while running */
	bool stopping;             /* a first SIGINT/SIGTERM came */
};

/*
 * The first SIGINT/SIGTERM stops accepting and lets connections finish for
 * shutdown_timeout seconds (worker_pool_drain); a second one, or a
 * shutdown_timeout of 0, stops at once. Either way the exit status is 0.
 */
static void on_stop_signal(evutil_socket_t signum, short what, void *arg)
{
	struct service *service = arg;
	const char *name = signum == SIGINT ? "SIGINT" : "SIGTERM";
	(void)what;
	struct ruleset *rules = worker_pool_rules(service->pool);
	double shutdown_timeout = rules->cfg.shutdown_timeout;
	ruleset_unref(rules);
	if (service->stopping || shutdown_timeout <= 0) {
		log_info(NULL, "%s: stopping%s", name, service->stopping ? " now" : "");
		if (!service->stopping)
			notify_stopping(service->notify, "stopping");
		service->stopping = true;
		worker_pool_stop(service->pool);
		return;
	}
	service->stopping = true;
	log_info(NULL, "%s: no longer accepting; open connections may finish for up to %g s "
		 "(shutdown_timeout; a second signal stops at once)", name, shutdown_timeout);
	notify_stopping(service->notify, "stopping: letting open connections finish");
	worker_pool_drain(service->pool, shutdown_timeout);
}

/* The STATUS= line while running. */
static void describe_status(struct service *service)
{
	struct ruleset *rules = worker_pool_rules(service->pool);
	const struct relay_ctx *first = worker_pool_first(service->pool);
	snprintf(service->status, sizeof service->status,
		 "relaying %zu forwards: %u tcp listeners, %u udp sockets",
		 count_enabled(&rules->cfg), listener_set_count(first->listeners),
		 udp_relay_socket_count(first->udp));
	ruleset_unref(rules);
}

/*
 * SIGHUP (systemctl reload): read the sources again and apply them
 * (reload.h), between RELOADING=1 and READY=1 for systemd.
 */
static void on_hangup_signal(evutil_socket_t signum, short what, void *arg)
{
	struct service *service = arg;
	(void)signum, (void)what;
	if (service->stopping) {
		log_info(NULL, "SIGHUP while stopping: not reloading");
		return;
	}
	notify_reloading(service->notify, "reloading the configuration");
	log_info(NULL, "SIGHUP: reloading the configuration");
	reload_run(&service->reloader);
	describe_status(service);
	notify_ready(service->notify, service->status);
}

/* A change through the Port Forwarding API, on its way to the main thread. */
struct api_change_call {
	struct service *service;
	const char *candidate;
	char *err;
	size_t err_len;
};

/* On the main thread, like SIGHUP's reload: one reload at a time. */
static int apply_on_main_thread(void *arg)
{
	struct api_change_call *call = arg;
	struct service *service = call->service;
	if (service->stopping) {
		snprintf(call->err, call->err_len, "the relay is stopping");
		return API_APPLY_STOPPING;
	}
	notify_reloading(service->notify, "applying a change from the admin API");
	int result = reload_run_candidate(&service->reloader, call->candidate, call->err,
					  call->err_len);
	describe_status(service);
	notify_ready(service->notify, service->status);
	return result;
}

/* The admin thread's apply (admin.h): waits for the main thread to run it. */
static int apply_from_admin(void *arg, const char *candidate, char *err, size_t err_len)
{
	struct service *service = arg;
	struct api_change_call call = { service, candidate, err, err_len };
	snprintf(err, err_len, "the relay is stopping");
	return cross_call_run(service->calls, apply_on_main_thread, &call, API_APPLY_STOPPING);
}

static bool uses_ftp(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		if (cfg->forwards[i].enabled && cfg->forwards[i].ftp)
			return true;
	}
	return false;
}

/* What happened while running, for the last lines of the log. */
static void log_totals(const struct config *cfg, const struct relay_counters *c)
{
	log_info(NULL, "stopped. tcp: %llu connections (%llu failed to connect, %llu reset, "
		 "%llu idle timeouts), %llu bytes to internal, %llu bytes to client, %llu "
		 "episodes out of file descriptors",
		 (unsigned long long)c->tcp_accepted,
		 (unsigned long long)relay_counters_connect_failed(c),
		 (unsigned long long)c->tcp_reset, (unsigned long long)c->tcp_idle_closed,
		 (unsigned long long)c->bytes_to_internal, (unsigned long long)c->bytes_to_client,
		 (unsigned long long)c->accept_fd_exhausted);
	log_info(NULL, "stopped. udp: %llu flows (%llu expired), %llu datagrams to internal, "
		 "%llu to client; dropped: %llu table full, %llu no flow socket, %llu too big, "
		 "%llu send failed; %llu port unreachable",
		 (unsigned long long)c->udp_flows_created, (unsigned long long)c->udp_flows_expired,
		 (unsigned long long)c->udp_datagrams_to_internal,
		 (unsigned long long)c->udp_datagrams_to_client,
		 (unsigned long long)c->udp_dropped_table_full,
		 (unsigned long long)c->udp_flow_failed,
		 (unsigned long long)c->udp_dropped_truncated,
		 (unsigned long long)c->udp_dropped_send, (unsigned long long)c->udp_refused);
	if (uses_ftp(cfg))
		log_info(NULL, "stopped. ftp: %llu data listeners (%llu connected, %llu expired "
			 "unused, %llu closed unused with their control connection or replaced), "
			 "%llu data connections from a foreign address refused, %llu commands "
			 "refused",
			 (unsigned long long)c->ftp_data_opened,
			 (unsigned long long)c->ftp_data_connected,
			 (unsigned long long)c->ftp_data_expired,
			 (unsigned long long)c->ftp_data_dropped,
			 (unsigned long long)c->ftp_data_refused,
			 (unsigned long long)c->ftp_commands_refused);
}

static int run(struct config *config, const struct config_sources *sources,
	       bool log_level_fixed, unsigned long fd_limit)
{
	char err[1024];
	if (worker_check_transparent(config, err, sizeof err) < 0) {
		fprintf(stderr, "portrelay: %s\n", err);
		return EXIT_CONFIG;
	}
	unsigned workers = choose_workers(config, fd_limit);
	struct ruleset *rules = ruleset_new(config, NULL, workers);
	if (rules == NULL) {
		log_error(NULL, "out of memory");
		return EXIT_CONFIG;
	}
	const struct config *cfg = &rules->cfg;
	struct worker_pool *pool = worker_pool_open(rules, workers, fd_limit);
	if (pool == NULL) {
		ruleset_unref(rules);
		return EXIT_CONFIG;
	}
	struct event_base *base = worker_pool_main_base(pool);
	struct service service = {
		.pool = pool,
		.calls = cross_call_open(base),
		.reloader = { .sources = sources, .pool = pool, .workers = workers,
			      .log_level_fixed = log_level_fixed },
	};
	struct admin *admin = NULL;
	if (service.calls == NULL ||
	    (cfg->admin_listen[0] != '\0' &&
	     (admin = admin_open(cfg, pool, apply_from_admin, &service)) == NULL) ||
	    drop_privileges(cfg) < 0) {
		admin_free(admin);
		cross_call_stop(service.calls);
		cross_call_free(service.calls);
		worker_pool_free(pool);
		ruleset_unref(rules);
		return EXIT_CONFIG;
	}
	service.notify = notify_open(base);
	struct event *sigint = evsignal_new(base, SIGINT, on_stop_signal, &service);
	struct event *sigterm = evsignal_new(base, SIGTERM, on_stop_signal, &service);
	struct event *sighup = evsignal_new(base, SIGHUP, on_hangup_signal, &service);
	evsignal_add(sigint, NULL);
	evsignal_add(sigterm, NULL);
	evsignal_add(sighup, NULL);

	const struct relay_ctx *first = worker_pool_first(pool);
	show_forwards(cfg, true);
	char busy_poll[48] = "";
	if (cfg->busy_poll_us > 0)
		snprintf(busy_poll, sizeof busy_poll, ", busy poll %u us", cfg->busy_poll_us);
	log_info(NULL, "ready: %u tcp listeners and %u udp sockets for %zu forwards, %u worker%s%s%s",
		 listener_set_count(first->listeners), udp_relay_socket_count(first->udp),
		 count_enabled(cfg), workers, workers == 1 ? "" : "s",
		 cfg->tcp_splice ? ", splice on" : "", busy_poll);
	describe_status(&service);
	notify_ready(service.notify, service.status);
	/*
	 * The pool holds the rules from here: a reload may replace them, and
	 * the counters of forwards it removes reach the totals only once no
	 * one holds them.
	 */
	ruleset_unref(rules);
	int status = worker_pool_run(pool) == 0 ? EXIT_OK : EXIT_CONFIG;
	/* The loop has ended: a change the admin thread waits for will not run. */
	cross_call_stop(service.calls);

	worker_pool_close(pool);
	struct relay_counters totals;
	worker_pool_counters(pool, &totals);
	struct ruleset *last = worker_pool_rules(pool);
	log_totals(&last->cfg, &totals);
	ruleset_unref(last);
	/*
	 * Freeing the signal events gives the signals their default action
	 * back: a second SIGINT or SIGTERM arriving now (it asks to stop at
	 * once; we are stopping) would kill the process instead of exiting 0.
	 * Blocked first, then ignored: one pending meanwhile is discarded.
	 */
	sigset_t stop_signals;
	sigemptyset(&stop_signals);
	sigaddset(&stop_signals, SIGINT);
	sigaddset(&stop_signals, SIGTERM);
	sigaddset(&stop_signals, SIGHUP);
	pthread_sigmask(SIG_BLOCK, &stop_signals, NULL);
	event_free(sigint);
	event_free(sigterm);
	event_free(sighup);
	signal(SIGINT, SIG_IGN);
	signal(SIGTERM, SIG_IGN);
	signal(SIGHUP, SIG_IGN);
	notify_close(service.notify);
	admin_free(admin);
	cross_call_free(service.calls);
	worker_pool_free(pool);
	return status;
}

int main(int argc, char **argv)
{
	struct options opts = { 0 };
	opts.specs = calloc((size_t)argc, sizeof *opts.specs);
	if (opts.specs == NULL)
		return EXIT_CONFIG;
	int early_exit = parse_options(argc, argv, &opts);
	if (early_exit >= 0) {
		free(opts.specs);
		return early_exit;
	}

	struct config cfg;
	config_defaults(&cfg);
	int status = EXIT_OK;
	struct config_sources sources = config_sources_of(&opts);
	if (load_config(&sources, &cfg) < 0) {
		status = EXIT_CONFIG;
		goto out;
	}
	log_set_level(opts.log_level_given ? opts.log_level : cfg.log_level);

	if (opts.check_only) {
		show_forwards(&cfg, false);
		goto out;
	}
	/* With the admin endpoint, rules can come later, from the Port Forwarding page. */
	if (count_enabled(&cfg) == 0 && cfg.admin_listen[0] == '\0') {
		fprintf(stderr, "portrelay: no enabled forward: nothing to do\n");
		status = EXIT_CONFIG;
		goto out;
	}

	/* A peer that closes while we write must cost an EPIPE, not the process. */
	signal(SIGPIPE, SIG_IGN);
	status = run(&cfg, &sources, opts.log_level_given, raise_fd_limit());
out:
	config_free(&cfg);
	free(opts.specs);
	libevent_global_shutdown();
	return status;
}
