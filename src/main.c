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

#include "portrelay/config.h"
#include "portrelay/listener.h"
#include "portrelay/log.h"
#include "portrelay/relay.h"
#include "portrelay/udp_relay.h"

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

static int load_config(const struct options *opts, struct config *cfg)
{
	char err[1024];
	const char *path = opts->config_path;
	if (path == NULL && opts->spec_count == 0)
		path = DEFAULT_CONFIG_PATH;

	if (path != NULL && config_load_file(cfg, path, err, sizeof err) < 0)
		goto fail;
	for (size_t i = 0; i < opts->spec_count; i++) {
		if (config_add_spec(cfg, opts->specs[i], err, sizeof err) < 0)
			goto fail;
	}
	if (config_finish(cfg, err, sizeof err) < 0)
		goto fail;
	return 0;
fail:
	fprintf(stderr, "portrelay: %s\n", err);
	return -1;
}

static size_t count_enabled(const struct config *cfg)
{
	size_t enabled = 0;
	for (size_t i = 0; i < cfg->forward_count; i++)
		enabled += cfg->forwards[i].enabled;
	return enabled;
}

static void print_forwards(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		char line[1024];
		if (cfg->forwards[i].enabled)
			printf("%s\n", forward_describe(&cfg->forwards[i], line, sizeof line));
	}
}

/*
 * Every connection costs two descriptors; the default soft limit (often
 * 1024) would cap the relay at a few hundred clients.
 */
static void raise_fd_limit(void)
{
	struct rlimit limit;
	if (getrlimit(RLIMIT_NOFILE, &limit) < 0)
		return;
	if (limit.rlim_cur < limit.rlim_max) {
		limit.rlim_cur = limit.rlim_max;
		if (setrlimit(RLIMIT_NOFILE, &limit) < 0)
			log_warn(NULL, "cannot raise the open-files limit: %s", strerror(errno));
	}
	getrlimit(RLIMIT_NOFILE, &limit);
	log_info(NULL, "open-files limit %llu: room for about %llu connections",
		 (unsigned long long)limit.rlim_cur, (unsigned long long)limit.rlim_cur / 2);
}

static void on_stop_signal(evutil_socket_t signum, short what, void *arg)
{
	struct relay_ctx *ctx = arg;
	(void)what;
	log_info(NULL, "%s: stopping, closing %u connections",
		 signum == SIGINT ? "SIGINT" : "SIGTERM", ctx->session_count);
	event_base_loopbreak(ctx->base);
}

static void log_forwards(const struct config *cfg)
{
	for (size_t i = 0; i < cfg->forward_count; i++) {
		char line[1024];
		if (cfg->forwards[i].enabled)
			log_info(NULL, "forward %s",
				 forward_describe(&cfg->forwards[i], line, sizeof line));
	}
}

static int run(const struct config *cfg)
{
	struct event_base *base = event_base_new();
	if (base == NULL) {
		log_error(NULL, "cannot create the event loop");
		return EXIT_CONFIG;
	}
	struct relay_ctx ctx;
	relay_ctx_init(&ctx, base, cfg);
	struct event *sigint = evsignal_new(base, SIGINT, on_stop_signal, &ctx);
	struct event *sigterm = evsignal_new(base, SIGTERM, on_stop_signal, &ctx);
	evsignal_add(sigint, NULL);
	evsignal_add(sigterm, NULL);

	int status = EXIT_OK;
	if (relay_ctx_open(&ctx) < 0) {
		status = EXIT_CONFIG;
	} else {
		log_forwards(cfg);
		log_info(NULL, "ready: %u tcp listeners and %u udp sockets for %zu forwards",
			 listener_set_count(ctx.listeners), udp_relay_socket_count(ctx.udp),
			 count_enabled(cfg));
		event_base_dispatch(base);
		log_info(NULL, "stopped: %llu tcp connections and %llu udp flows served",
			 (unsigned long long)ctx.counters.tcp_accepted,
			 (unsigned long long)ctx.counters.udp_flows_created);
	}
	relay_ctx_close(&ctx);
	event_free(sigint);
	event_free(sigterm);
	event_base_free(base);
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
	if (load_config(&opts, &cfg) < 0) {
		status = EXIT_CONFIG;
		goto out;
	}
	log_set_level(opts.log_level_given ? opts.log_level : cfg.log_level);

	if (opts.check_only) {
		print_forwards(&cfg);
		goto out;
	}
	if (count_enabled(&cfg) == 0) {
		fprintf(stderr, "portrelay: no enabled forward: nothing to do\n");
		status = EXIT_CONFIG;
		goto out;
	}

	/* A peer that closes while we write must cost an EPIPE, not the process. */
	signal(SIGPIPE, SIG_IGN);
	raise_fd_limit();
	status = run(&cfg);
out:
	config_free(&cfg);
	free(opts.specs);
	libevent_global_shutdown();
	return status;
}
