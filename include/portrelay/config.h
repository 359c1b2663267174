/*
 * config.h - the configuration file and -L specs, turned into a validated,
 * immutable forward table.
 *
 * Typical use, as in main.c:
 *
 *	struct config cfg;
 *	config_defaults(&cfg);
 *	config_load_file(&cfg, path, err, sizeof err);   // zero or one file
 *	config_add_spec(&cfg, "tcp:8080:127.0.0.1:80", err, sizeof err);  // any number
 *	config_finish(&cfg, err, sizeof err);             // defaults, resolution, overlaps
 *	...
 *	config_free(&cfg);
 *
 * Every function returns 0 on success and -1 on error, with one line in err
 * that names where the problem is: "FILE:LINE: forward \"NAME\": reason" for
 * the file, "-L 'SPEC': reason" for a spec.
 */
#ifndef PORTRELAY_CONFIG_H
#define PORTRELAY_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include <libconfig.h>

#include "portrelay/acl.h"
#include "portrelay/log.h"
#include "portrelay/net.h"
#include "portrelay/proxy_header.h"

enum forward_proto {
	FORWARD_TCP = 1,
	FORWARD_UDP = 2,
	FORWARD_BOTH = FORWARD_TCP | FORWARD_UDP,
};

#define CONFIG_NAME_MAX 64
#define CONFIG_HOST_MAX 256
#define CONFIG_ORIGIN_MAX 512
#define CONFIG_WORKERS_LIMIT 256
#define CONFIG_BUSY_POLL_LIMIT_US 10000
/* Upper bound of every count limit (connections, flows): beyond it a typo is likelier. */
#define CONFIG_COUNT_LIMIT 16777216u
/* Defaults of the per-source limits of a forward. */
#define CONFIG_DEFAULT_MAX_CONNECTIONS_PER_SOURCE 256u
#define CONFIG_DEFAULT_MAX_FLOWS_PER_SOURCE 1024u
/* The kernel's largest TCP_KEEPIDLE (MAX_TCP_KEEPIDLE), in seconds. */
#define CONFIG_KEEPALIVE_LIMIT 32767u

/* A forward's counters, kept across reloads (ruleset.h); opaque here. */
struct forward_stats;

struct forward {
	char name[CONFIG_NAME_MAX];        /* from the file, or "tcp:8080" style for -L */
	enum forward_proto proto;
	/* Text as written; empty means "use wan_address" until config_finish. */
	char external_host[CONFIG_HOST_MAX];
	struct net_addr external_addr;     /* numeric; port field unused (0) */
	uint16_t external_port_first;
	uint16_t external_port_last;       /* == first for a single port */
	char internal_host[CONFIG_HOST_MAX];
	struct net_addr internal_addr;     /* resolved by config_finish; port 0 */
	uint16_t internal_port_first;
	uint16_t internal_port_last;
	bool enabled;
	/* Seconds a UDP flow of this forward lives idle; udp.idle_timeout unless set. */
	double udp_idle_timeout;
	/* The FTP helper watches this forward's control connections (tcp only). */
	bool ftp;
	/*
	 * Ports the helper's data listeners bind: ftp_data_ports, else
	 * ftp.data_ports (filled in by config_finish); 0-0 lets the kernel pick.
	 */
	uint16_t ftp_data_port_first;
	uint16_t ftp_data_port_last;

	/*
	 * Admission control. Counts: 0 means no limit of the forward's own.
	 * max_connections: TCP connections of this forward open at once (FTP
	 * data connections included). The per-source limits count one client
	 * "source" (acl_source_key: an IPv4 address, an IPv6 /64): TCP
	 * connections open at once, UDP flows at once.
	 */
	unsigned max_connections;            /* default 0 */
	unsigned max_connections_per_source; /* default 256 */
	unsigned max_flows_per_source;       /* default 1024 */
	/* allow / deny, in file order: first match wins, default allow (acl.h). */
	struct acl acl;
	/* Bind external_address even when the host does not have it (yet): IP_FREEBIND. */
	bool freebind;
	/*
	 * proxy_protocol = "v1" | "v2": tell the internal server the client's
	 * address with a PROXY header (proxy_header.h); PROXY_NONE (default):
	 * no header. TCP: v1 or v2, first bytes of each connection; UDP: v2 in
	 * front of every datagram. Not with ftp.
	 */
	enum proxy_version proxy_protocol;
	/*
	 * access_log = true: one line at info per finished TCP connection and
	 * per closed UDP flow (client, external and internal addresses, bytes
	 * each way, duration, how it ended).
	 */
	bool access_log;
	/*
	 * source = "client": transparent mode, the connection (or flow socket)
	 * to the internal server is bound to the client's own address and port
	 * (IP_TRANSPARENT); default "relay": the relay's address.
	 */
	bool source_client;
	/* It came from admin.rules_file (editable by the API), not the hand-written file or -L. */
	bool from_rules_file;
	/* No external_address of its own: it follows wan_address (so the API leaves it out). */
	bool external_from_wan;

	/* Where it came from, for messages: "etc/x.conf:12" or "-L 'tcp:...'". */
	char origin[CONFIG_ORIGIN_MAX];
	/*
	 * Not configuration: set when the table is published as a ruleset
	 * (ruleset.h), NULL before. Whoever runs the forward counts through it.
	 */
	struct forward_stats *stats;
};

struct config {
	char wan_address[CONFIG_HOST_MAX];  /* default "0.0.0.0" */
	enum log_level log_level;           /* default info */
	double tcp_connect_timeout;         /* seconds, default 10 */
	double tcp_idle_timeout;            /* seconds, 0 = never (default) */
	bool tcp_splice;                    /* zero-copy relaying, default true */
	unsigned workers;                   /* event-loop threads; 0 = one per CPU */
	unsigned busy_poll_us;              /* keep polling this long after traffic; 0 = off */
	/*
	 * Seconds a TCP connection may stay idle before keepalive probes start,
	 * on both of its sockets (TCP_KEEPIDLE); 0 = no keepalive. Default 60.
	 */
	unsigned tcp_keepalive;
	double udp_idle_timeout;            /* seconds, default 60 */
	/*
	 * Seconds a UDP flow that never got a reply lives without traffic
	 * (> 0, default 30). A flow's idle timeout, when shorter, still wins.
	 */
	double udp_unreplied_timeout;
	/*
	 * UDP flows per forward, 1-16777216; 0 (default) = automatic: the
	 * runtime fits it to the local port range and the descriptor limit.
	 */
	unsigned udp_max_flows;
	/*
	 * TCP connections open at once, all forwards together (FTP data
	 * connections included); 0 (default) = automatic: the runtime derives it
	 * from the open-files limit.
	 */
	unsigned max_connections;
	uint16_t ftp_data_port_first;       /* ftp.data_ports; 0-0 (default): the kernel picks */
	uint16_t ftp_data_port_last;
	double ftp_data_timeout;            /* seconds a data listener waits, default 30 */
	double shutdown_timeout;            /* seconds SIGTERM lets connections finish, default 5 */
	/*
	 * Seconds the connections and flows of a forward that a reload removed
	 * or changed may go on under their old rule; 0 (default): until they end.
	 */
	double drain_timeout;

	/*
	 * user / group: whom to run as after binding. Names as written (a name
	 * or a numeric id), resolved when the file is read: run_uid and
	 * run_gid. run_gid is the group's id with `group`, else the user's
	 * primary group. group alone (has_group without has_user) drops the
	 * group only.
	 */
	char user[CONFIG_NAME_MAX];
	char group[CONFIG_NAME_MAX];
	bool has_user;
	bool has_group;
	uid_t run_uid;
	gid_t run_gid;

	/*
	 * admin = { listen; token_file; }: the admin endpoint (admin.c). An
	 * empty admin_listen: none. admin_listen is "IP:PORT" ("[::1]:9330")
	 * or an absolute Unix socket path (admin_unix).
	 */
	char admin_listen[CONFIG_ORIGIN_MAX];
	bool admin_unix;
	struct net_addr admin_addr;         /* with the port; when !admin_unix */
	char admin_token_file[CONFIG_ORIGIN_MAX];   /* empty: no token asked */
	/*
	 * admin.rules_file: forwards the daemon owns (the Port Forwarding API's),
	 * loaded after the -c file and the -L flags, at start and at every
	 * reload; empty: none. A missing file holds no forward.
	 */
	char admin_rules_file[CONFIG_ORIGIN_MAX];

	struct forward *forwards;           /* enabled and disabled, in order */
	size_t forward_count;
};

/*
 * Sets every global setting to its default and empties the table. Not named
 * config_init: libconfig exports a config_init(config_t *) of its own, and
 * a second global function of that name would replace it at link time.
 */
void config_defaults(struct config *cfg);

/* Frees the table and leaves cfg as config_defaults does. */
void config_free(struct config *cfg);

/* Reads a libconfig file: global settings and its forwards (appended). */
int config_load_file(struct config *cfg, const char *path, char *err, size_t err_len);

/*
 * Reads admin.rules_file (path): forwards only (anything else is an error
 * naming its line), appended and marked from_rules_file. A file that does
 * not exist holds no forward: 0. read_path, when not NULL, is read in
 * path's stead (a candidate the API is about to put there), messages
 * still naming path.
 */
int config_load_rules_file(struct config *cfg, const char *path, const char *read_path,
			   char *err, size_t err_len);

/*
 * Reads one forward from a libconfig group, as a forward of the file
 * (same fields, same checks), then completes it as config_finish does
 * (cfg gives wan_address and the defaults; the internal host is resolved).
 * This is how the Port Forwarding API checks a rule it was sent. where
 * names it in messages (settings built in memory have no line). On error:
 * -1, the message in err, and in field the name of the field at fault
 * ("" when it is about no one field).
 */
int config_read_forward(const struct config *cfg, const config_setting_t *group,
			const char *where, struct forward *out, char *err, size_t err_len,
			char *field, size_t field_len);

/* Parses one -L SPEC and appends the forward. */
int config_add_spec(struct config *cfg, const char *spec, char *err, size_t err_len);

/*
 * Completes the table once everything is loaded: fills external addresses
 * from wan_address, resolves internal hosts, rejects overlapping enabled
 * forwards. After this the table is not modified.
 */
int config_finish(struct config *cfg, char *err, size_t err_len);

/*
 * Where a configuration comes from: what start-up read, and what a reload
 * reads again. path NULL: no file.
 */
struct config_sources {
	const char *path;
	const char *const *specs;
	size_t spec_count;
	/* Read in admin.rules_file's stead when not NULL (config_load_rules_file). */
	const char *rules_file_read;
};

/*
 * config_defaults, then the file, the specs and config_finish: a whole
 * configuration from its sources, or -1 with the first error in err. On
 * error cfg is left freed.
 */
int config_load_sources(struct config *cfg, const struct config_sources *sources, char *err,
			size_t err_len);

/*
 * Two forwards in the same place: the same protocol, external address and
 * port range. A reload keeps the sockets and the state (UDP flows,
 * counters) of a forward whose place it finds again.
 */
bool forward_same_place(const struct forward *a, const struct forward *b);

/*
 * The same place and the same target (internal address and ports) and
 * helper: a connection or flow opened under a can go on under b. A
 * reload moves those over (a renamed forward keeps its connections; a
 * new internal address leaves them on the old rule).
 */
bool forward_same_target(const struct forward *a, const struct forward *b);

/* The same place and the same rule: nothing but the origin differs. */
bool forward_same_rule(const struct forward *a, const struct forward *b);

/*
 * Whether two forwards, both enabled, would listen on a common protocol,
 * address and port: the overlap config_finish refuses.
 */
bool forward_overlaps(const struct forward *a, const struct forward *b);

/* Number of external ports a forward opens (1 for a single port). */
unsigned forward_port_count(const struct forward *fwd);

/* "tcp", "udp" or "both". */
const char *forward_proto_name(enum forward_proto proto);

/*
 * One line describing the forward, as --check prints it:
 *	ftp  tcp  0.0.0.0:21 -> 192.168.20.142:21
 *	web  both [::]:30000-30009 -> 192.0.2.10:30000-30009
 */
const char *forward_describe(const struct forward *fwd, char *buf, size_t buf_len);

/* The internal address and port that external_port (within the range) maps to. */
struct net_addr forward_internal_addr(const struct forward *fwd, uint16_t external_port);

#endif
