/*
 * config_file.c - config_load_file: reads a libconfig file into the global
 * settings and appends its forwards. Checks what the file alone can tell;
 * config_finish (config.c) does the rest.
 */
#include <libconfig.h>

#include "portrelay/config.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <math.h>
#include <netinet/in.h>
#include <pwd.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config_internal.h"

/* A flow costs a socket and some memory; beyond this a typo is likelier than intent. */
#define CONFIG_MAX_FLOWS_LIMIT ((long long)CONFIG_COUNT_LIMIT)
/* Keeps seconds -> struct timeval conversion far from time_t overflow. */
#define CONFIG_TIMEOUT_LIMIT 1e9

/* ---- names ----------------------------------------------------------- */

/* Names go into single log lines, so no control characters. */
static const char *config_name_problem(const char *name)
{
	if (name[0] == '\0')
		return "is empty";
	if (strlen(name) >= CONFIG_NAME_MAX)
		return "is longer than 63 characters";
	for (const char *p = name; *p != '\0'; p++) {
		if (iscntrl((unsigned char)*p))
			return "contains control characters";
	}
	return NULL;
}

/* ---- the file: settings ------------------------------------------------ */

struct config_file {
	const char *path;
	const config_setting_t *user;   /* the user setting, once read */
	bool user_gid_known;            /* the user has an entry, so a primary group */
	char label[CONFIG_LABEL_MAX];   /* "forward \"ftp\": " while inside a forward */
	char *err;
	size_t err_len;
	/* When set: the name of the field an error is about ("" if none), for the API. */
	char *field;
	size_t field_len;
};

static int config_file_fail(const struct config_file *file, const config_setting_t *setting,
			    const char *fmt, ...) __attribute__((format(printf, 3, 4)));

/* "PATH:LINE" of a setting; settings from an @include name their own file. */
static void config_file_where(const struct config_file *file, const config_setting_t *setting,
			      char *buf, size_t len)
{
	const char *source = config_setting_source_file(setting);
	unsigned line = (unsigned)config_setting_source_line(setting);

	/* Settings built in memory (the API's rules) have no line. */
	if (line == 0)
		snprintf(buf, len, "%s", source != NULL ? source : file->path);
	else
		snprintf(buf, len, "%s:%u", source != NULL ? source : file->path, line);
}

/*
 * The field a setting belongs to: its own name, or its list's for an
 * element ("allow" for one of its networks); "" for a forward's group.
 */
static void config_file_note_field(const struct config_file *file,
				   const config_setting_t *setting, const char *field)
{
	if (file->field == NULL)
		return;
	if (field == NULL && !config_setting_is_group(setting)) {
		field = config_setting_name(setting);
		if (field == NULL && config_setting_parent(setting) != NULL)
			field = config_setting_name(config_setting_parent(setting));
	}
	snprintf(file->field, file->field_len, "%s", field != NULL ? field : "");
}

static int config_file_fail(const struct config_file *file, const config_setting_t *setting,
			    const char *fmt, ...)
{
	char where[CONFIG_ORIGIN_MAX];
	char reason[CONFIG_REASON_MAX];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(reason, sizeof reason, fmt, ap);
	va_end(ap);
	config_file_where(file, setting, where, sizeof where);
	config_file_note_field(file, setting, NULL);
	return config_fail(file->err, file->err_len, where, file->label, "%s", reason);
}

/* A required field that is missing: the error is the group's, about that field. */
static int config_file_missing(const struct config_file *file, const config_setting_t *group,
			       const char *field, const char *what)
{
	char where[CONFIG_ORIGIN_MAX];

	config_file_where(file, group, where, sizeof where);
	config_file_note_field(file, group, field);
	return config_fail(file->err, file->err_len, where, file->label, "%s is required%s",
			   field, what);
}

static bool config_setting_is_integer(const config_setting_t *setting)
{
	return config_setting_type(setting) == CONFIG_TYPE_INT ||
	       config_setting_type(setting) == CONFIG_TYPE_INT64;
}

static const char *config_file_string(const config_setting_t *setting)
{
	if (config_setting_type(setting) != CONFIG_TYPE_STRING)
		return NULL;
	return config_setting_get_string(setting);
}

/* Seconds as an integer or a float: finite, >= 0 (or > 0), and bounded. */
static int config_file_timeout(const struct config_file *file, const config_setting_t *setting,
			       const char *key, bool zero_allowed, double *seconds)
{
	const char *rule = zero_allowed ? ">= 0" : "> 0";
	double value;

	if (!config_setting_is_number(setting))
		return config_file_fail(file, setting, "%s must be a number %s", key, rule);
	if (config_setting_type(setting) == CONFIG_TYPE_FLOAT)
		value = config_setting_get_float(setting);
	else
		value = (double)config_setting_get_int64(setting);
	if (!isfinite(value) || value < 0 || (!zero_allowed && value == 0))
		return config_file_fail(file, setting, "%s must be a number %s, not %g", key,
					rule, value);
	if (value > CONFIG_TIMEOUT_LIMIT)
		return config_file_fail(file, setting, "%s %g is too large (at most %.0f seconds)",
					key, value, CONFIG_TIMEOUT_LIMIT);
	*seconds = value;
	return 0;
}

static int config_file_wan_address(struct config *cfg, struct config_file *file,
				   const config_setting_t *setting)
{
	const char *text = config_file_string(setting);
	char bare[CONFIG_HOST_MAX];

	if (text == NULL)
		return config_file_fail(file, setting, "wan_address must be a string");
	if (!config_numeric_address(text, bare, sizeof bare))
		return config_file_fail(file, setting,
					"wan_address \"%s\" is not a numeric IPv4 or IPv6 address",
					text);
	snprintf(cfg->wan_address, sizeof cfg->wan_address, "%s", bare);
	return 0;
}

static int config_file_log_level(struct config *cfg, struct config_file *file,
				 const config_setting_t *setting)
{
	const char *text = config_file_string(setting);

	if (text == NULL)
		return config_file_fail(file, setting,
					"log_level must be a string: error, warn, info or debug");
	if (log_level_parse(text, &cfg->log_level) < 0)
		return config_file_fail(file, setting,
					"log_level \"%s\" is not one of error, warn, info, debug",
					text);
	return 0;
}

static int config_file_bool(struct config_file *file, const config_setting_t *setting,
			    const char *key, bool *value)
{
	if (config_setting_type(setting) != CONFIG_TYPE_BOOL)
		return config_file_fail(file, setting, "%s must be true or false", key);
	*value = config_setting_get_bool(setting) != 0;
	return 0;
}

/* Whether setting is an integer from min to max; then *value holds it. */
static bool config_file_integer_in(const config_setting_t *setting, long long min,
				   long long max, long long *value)
{
	if (!config_setting_is_integer(setting))
		return false;
	*value = config_setting_get_int64(setting);
	return *value >= min && *value <= max;
}

/*
 * A count limit: an integer from 0 to CONFIG_COUNT_LIMIT. zero_means says
 * what 0 is ("automatic", "no limit") for the message.
 */
static int config_file_count(struct config_file *file, const config_setting_t *setting,
			     const char *key, const char *zero_means, unsigned *value)
{
	long long number;
	if (!config_file_integer_in(setting, 0, CONFIG_COUNT_LIMIT, &number))
		return config_file_fail(file, setting, "%s must be an integer from 0 (%s) to %u",
					key, zero_means, CONFIG_COUNT_LIMIT);
	*value = (unsigned)number;
	return 0;
}

static int config_file_max_connections(struct config *cfg, struct config_file *file,
				       const config_setting_t *setting)
{
	return config_file_count(file, setting, "max_connections", "automatic",
				 &cfg->max_connections);
}

/*
 * Whole seconds from 0 to max: an integer, or a number without a fraction
 * (60.0), as the kernel takes keepalive times in seconds.
 */
static int config_file_whole_seconds(struct config_file *file, const config_setting_t *setting,
				     const char *key, const char *zero_means, unsigned max,
				     unsigned *value)
{
	double number = -1;

	if (config_setting_is_integer(setting))
		number = (double)config_setting_get_int64(setting);
	else if (config_setting_type(setting) == CONFIG_TYPE_FLOAT)
		number = config_setting_get_float(setting);
	if (!(number >= 0 && number <= max && number == floor(number)))
		return config_file_fail(file, setting,
					"%s must be a whole number of seconds from 0 (%s) to %u",
					key, zero_means, max);
	*value = (unsigned)number;
	return 0;
}

/* ---- user and group -------------------------------------------------------- */

/* Digits only: a numeric id; -1 otherwise (or past 2^31 - 2, which no system hands out). */
static long long config_numeric_id(const char *text)
{
	long long value = 0;
	if (text[0] == '\0')
		return -1;
	for (const char *p = text; *p != '\0'; p++) {
		if (*p < '0' || *p > '9' || value > 2147483646LL / 10)
			return -1;
		value = value * 10 + (*p - '0');
	}
	return value <= 2147483646LL ? value : -1;
}

/* A user or group name or id as a string (or an integer id): its text in out. */
static int config_file_account_text(struct config_file *file, const config_setting_t *setting,
				    const char *key, char *out, size_t out_len)
{
	const char *text = config_file_string(setting);
	const char *problem;

	if (config_setting_is_integer(setting)) {
		long long id = config_setting_get_int64(setting);
		if (id < 0 || id > 2147483646LL)
			return config_file_fail(file, setting, "%s %lld is not a valid id", key, id);
		snprintf(out, out_len, "%lld", id);
		return 0;
	}
	if (text == NULL)
		return config_file_fail(file, setting, "%s must be a string: a name or a numeric id",
					key);
	problem = config_name_problem(text);
	if (problem != NULL)
		return config_file_fail(file, setting, "%s %s", key, problem);
	snprintf(out, out_len, "%s", text);
	return 0;
}

/*
 * user: a name from the user database, or a numeric id. The user's primary
 * group is kept in run_gid for when no group is given (a numeric id with no
 * entry has none: then group is required, checked once the file is read).
 */
static int config_file_user(struct config *cfg, struct config_file *file,
			    const config_setting_t *setting)
{
	struct passwd *pw;
	long long id;

	if (config_file_account_text(file, setting, "user", cfg->user, sizeof cfg->user) < 0)
		return -1;
	id = config_numeric_id(cfg->user);
	pw = id >= 0 ? getpwuid((uid_t)id) : getpwnam(cfg->user);
	if (pw == NULL && id < 0)
		return config_file_fail(file, setting, "user \"%s\" does not exist", cfg->user);
	cfg->has_user = true;
	cfg->run_uid = pw != NULL ? pw->pw_uid : (uid_t)id;
	file->user_gid_known = pw != NULL;
	file->user = setting;
	if (pw != NULL && !cfg->has_group)
		cfg->run_gid = pw->pw_gid;
	return 0;
}

/* group: a name from the group database, or a numeric id. */
static int config_file_group(struct config *cfg, struct config_file *file,
			     const config_setting_t *setting)
{
	struct group *gr;
	long long id;

	if (config_file_account_text(file, setting, "group", cfg->group, sizeof cfg->group) < 0)
		return -1;
	id = config_numeric_id(cfg->group);
	gr = id >= 0 ? getgrgid((gid_t)id) : getgrnam(cfg->group);
	if (gr == NULL && id < 0)
		return config_file_fail(file, setting, "group \"%s\" does not exist", cfg->group);
	cfg->has_group = true;
	cfg->run_gid = gr != NULL ? gr->gr_gid : (gid_t)id;
	return 0;
}

static int config_file_workers(struct config *cfg, struct config_file *file,
			       const config_setting_t *setting)
{
	long long value;
	if (!config_file_integer_in(setting, 0, CONFIG_WORKERS_LIMIT, &value))
		return config_file_fail(file, setting,
					"workers must be an integer from 0 (one per CPU) to %d",
					CONFIG_WORKERS_LIMIT);
	cfg->workers = (unsigned)value;
	return 0;
}

static int config_file_busy_poll(struct config *cfg, struct config_file *file,
				 const config_setting_t *setting)
{
	long long value;
	if (!config_file_integer_in(setting, 0, CONFIG_BUSY_POLL_LIMIT_US, &value))
		return config_file_fail(file, setting,
					"busy_poll must be an integer number of microseconds "
					"from 0 (off) to %d", CONFIG_BUSY_POLL_LIMIT_US);
	cfg->busy_poll_us = (unsigned)value;
	return 0;
}

static int config_file_shutdown_timeout(struct config *cfg, struct config_file *file,
					const config_setting_t *setting)
{
	return config_file_timeout(file, setting, "shutdown_timeout", true,
				   &cfg->shutdown_timeout);
}

static int config_file_drain_timeout(struct config *cfg, struct config_file *file,
				     const config_setting_t *setting)
{
	return config_file_timeout(file, setting, "drain_timeout", true, &cfg->drain_timeout);
}

static int config_file_tcp(struct config *cfg, struct config_file *file,
			   const config_setting_t *group)
{
	if (!config_setting_is_group(group))
		return config_file_fail(file, group, "tcp must be a group { ... }");
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *setting = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(setting);
		int rc;

		if (strcmp(name, "connect_timeout") == 0)
			rc = config_file_timeout(file, setting, "tcp.connect_timeout", false,
						 &cfg->tcp_connect_timeout);
		else if (strcmp(name, "idle_timeout") == 0)
			rc = config_file_timeout(file, setting, "tcp.idle_timeout", true,
						 &cfg->tcp_idle_timeout);
		else if (strcmp(name, "splice") == 0)
			rc = config_file_bool(file, setting, "tcp.splice", &cfg->tcp_splice);
		else if (strcmp(name, "keepalive") == 0)
			rc = config_file_whole_seconds(file, setting, "tcp.keepalive", "off",
						       CONFIG_KEEPALIVE_LIMIT, &cfg->tcp_keepalive);
		else
			rc = config_file_fail(file, setting, "unknown field \"tcp.%s\"", name);
		if (rc < 0)
			return -1;
	}
	return 0;
}

static int config_file_max_flows(struct config *cfg, struct config_file *file,
				 const config_setting_t *setting)
{
	long long value;
	if (!config_file_integer_in(setting, 0, CONFIG_MAX_FLOWS_LIMIT, &value))
		return config_file_fail(file, setting,
					"udp.max_flows must be an integer from 0 (automatic) to %lld",
					CONFIG_MAX_FLOWS_LIMIT);
	cfg->udp_max_flows = (unsigned)value;
	return 0;
}

static int config_file_udp(struct config *cfg, struct config_file *file,
			   const config_setting_t *group)
{
	if (!config_setting_is_group(group))
		return config_file_fail(file, group, "udp must be a group { ... }");
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *setting = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(setting);
		int rc;

		if (strcmp(name, "idle_timeout") == 0)
			rc = config_file_timeout(file, setting, "udp.idle_timeout", false,
						 &cfg->udp_idle_timeout);
		else if (strcmp(name, "max_flows") == 0)
			rc = config_file_max_flows(cfg, file, setting);
		else if (strcmp(name, "unreplied_timeout") == 0)
			rc = config_file_timeout(file, setting, "udp.unreplied_timeout", false,
						 &cfg->udp_unreplied_timeout);
		else
			rc = config_file_fail(file, setting, "unknown field \"udp.%s\"", name);
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* A port range in the file: an integer, or a string "N" or "N-M". */
static int config_file_ports(struct config_file *file, const config_setting_t *setting,
			     const char *key, struct config_ports *ports);

static int config_file_ftp(struct config *cfg, struct config_file *file,
			   const config_setting_t *group)
{
	if (!config_setting_is_group(group))
		return config_file_fail(file, group, "ftp must be a group { ... }");
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *setting = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(setting);
		struct config_ports ports;
		int rc;

		if (strcmp(name, "data_ports") == 0) {
			rc = config_file_ports(file, setting, "ftp.data_ports", &ports);
			cfg->ftp_data_port_first = ports.first;
			cfg->ftp_data_port_last = ports.last;
		} else if (strcmp(name, "data_timeout") == 0) {
			rc = config_file_timeout(file, setting, "ftp.data_timeout", false,
						 &cfg->ftp_data_timeout);
		} else {
			rc = config_file_fail(file, setting, "unknown field \"ftp.%s\"", name);
		}
		if (rc < 0)
			return -1;
	}
	return 0;
}

/* ---- the file: one forward --------------------------------------------- */

/* What a forward's settings told so far, beyond struct forward itself. */
struct config_forward_fields {
	struct config_ports external;
	struct config_ports internal;
	const config_setting_t *internal_port;   /* NULL: same as external_port */
	const config_setting_t *ftp;             /* "ftp = true", checked against protocol */
	const config_setting_t *ftp_data_ports;
	const config_setting_t *proxy_protocol;  /* checked against protocol and ftp */
	const config_setting_t *source;          /* checked against ftp */
	bool has_protocol;
	bool has_external_port;
	bool has_internal_ip;
};

typedef int (*config_forward_field_fn)(struct config_file *file, const config_setting_t *setting,
				       struct forward *fwd, struct config_forward_fields *fields);

static int config_forward_name(struct config_file *file, const config_setting_t *setting,
			       struct forward *fwd, struct config_forward_fields *fields)
{
	(void)file, (void)setting, (void)fwd, (void)fields;
	return 0;   /* read first, by config_forward_read_name, to label every message */
}

static int config_forward_protocol(struct config_file *file, const config_setting_t *setting,
				   struct forward *fwd, struct config_forward_fields *fields)
{
	const char *text = config_file_string(setting);

	if (text == NULL)
		return config_file_fail(file, setting,
					"protocol must be a string: tcp, udp or both");
	if (config_proto_parse(text, &fwd->proto) < 0)
		return config_file_fail(file, setting,
					"protocol \"%s\" is not tcp, udp or both", text);
	fields->has_protocol = true;
	return 0;
}

static int config_forward_external_address(struct config_file *file,
					   const config_setting_t *setting,
					   struct forward *fwd,
					   struct config_forward_fields *fields)
{
	const char *text = config_file_string(setting);

	(void)fields;
	if (text == NULL)
		return config_file_fail(file, setting, "external_address must be a string");
	if (!config_numeric_address(text, fwd->external_host, sizeof fwd->external_host))
		return config_file_fail(file, setting,
					"external_address \"%s\" is not a numeric IPv4 or IPv6 address",
					text);
	return 0;
}

/* A port value in the file: an integer, or a string "N" or "N-M". */
static int config_file_ports(struct config_file *file, const config_setting_t *setting,
			     const char *key, struct config_ports *ports)
{
	char why[CONFIG_REASON_MAX];
	int rc;

	if (config_setting_is_integer(setting))
		rc = config_ports_from_integer(config_setting_get_int64(setting), key, ports, why,
					       sizeof why);
	else if (config_setting_type(setting) == CONFIG_TYPE_STRING)
		rc = config_ports_parse(config_setting_get_string(setting), key, ports, why,
					sizeof why);
	else
		return config_file_fail(file, setting,
					"%s must be a port number or a range string \"N-M\"", key);
	if (rc < 0)
		return config_file_fail(file, setting, "%s", why);
	return 0;
}

static int config_forward_external_port(struct config_file *file,
					const config_setting_t *setting,
					struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fwd;
	fields->has_external_port = true;
	return config_file_ports(file, setting, "external_port", &fields->external);
}

static int config_forward_internal_port(struct config_file *file,
					const config_setting_t *setting,
					struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fwd;
	fields->internal_port = setting;
	return config_file_ports(file, setting, "internal_port", &fields->internal);
}

static int config_forward_internal_ip(struct config_file *file, const config_setting_t *setting,
				      struct forward *fwd, struct config_forward_fields *fields)
{
	const char *text = config_file_string(setting);
	const char *problem;

	if (text == NULL)
		return config_file_fail(file, setting,
					"internal_ip must be a string: an address or a host name");
	if (config_copy_unbracketed(text, fwd->internal_host, sizeof fwd->internal_host) < 0)
		return config_file_fail(file, setting,
					"internal_ip \"%s\" is too long or has an unmatched bracket",
					text);
	problem = config_host_problem(fwd->internal_host);
	if (problem != NULL)
		return config_file_fail(file, setting, "internal_ip \"%s\" %s", text, problem);
	fields->has_internal_ip = true;
	return 0;
}

static int config_forward_enabled(struct config_file *file, const config_setting_t *setting,
				  struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_bool(file, setting, "enabled", &fwd->enabled);
}

static int config_forward_udp_idle_timeout(struct config_file *file,
					   const config_setting_t *setting, struct forward *fwd,
					   struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_timeout(file, setting, "udp_idle_timeout", false,
				   &fwd->udp_idle_timeout);
}

static int config_forward_ftp(struct config_file *file, const config_setting_t *setting,
			      struct forward *fwd, struct config_forward_fields *fields)
{
	fields->ftp = setting;
	return config_file_bool(file, setting, "ftp", &fwd->ftp);
}

static int config_forward_proxy_protocol(struct config_file *file,
					 const config_setting_t *setting, struct forward *fwd,
					 struct config_forward_fields *fields)
{
	const char *text = config_file_string(setting);
	fields->proxy_protocol = setting;
	if (text != NULL && strcmp(text, "v1") == 0)
		fwd->proxy_protocol = PROXY_V1;
	else if (text != NULL && strcmp(text, "v2") == 0)
		fwd->proxy_protocol = PROXY_V2;
	else
		return config_file_fail(file, setting, "proxy_protocol must be \"v1\" or \"v2\"");
	return 0;
}

static int config_forward_source(struct config_file *file, const config_setting_t *setting,
				 struct forward *fwd, struct config_forward_fields *fields)
{
	const char *text = config_file_string(setting);
	fields->source = setting;
	if (text != NULL && strcmp(text, "client") == 0)
		fwd->source_client = true;
	else if (text != NULL && strcmp(text, "relay") == 0)
		fwd->source_client = false;
	else
		return config_file_fail(file, setting, "source must be \"relay\" or \"client\"");
	return 0;
}

static int config_forward_access_log(struct config_file *file, const config_setting_t *setting,
				     struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_bool(file, setting, "access_log", &fwd->access_log);
}

static int config_forward_ftp_data_ports(struct config_file *file,
					 const config_setting_t *setting, struct forward *fwd,
					 struct config_forward_fields *fields)
{
	struct config_ports ports;
	fields->ftp_data_ports = setting;
	if (config_file_ports(file, setting, "ftp_data_ports", &ports) < 0)
		return -1;
	fwd->ftp_data_port_first = ports.first;
	fwd->ftp_data_port_last = ports.last;
	return 0;
}

static int config_forward_max_connections(struct config_file *file,
					  const config_setting_t *setting, struct forward *fwd,
					  struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_count(file, setting, "max_connections", "no limit of its own",
				 &fwd->max_connections);
}

static int config_forward_max_connections_per_source(struct config_file *file,
						     const config_setting_t *setting,
						     struct forward *fwd,
						     struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_count(file, setting, "max_connections_per_source", "no limit",
				 &fwd->max_connections_per_source);
}

static int config_forward_max_flows_per_source(struct config_file *file,
					       const config_setting_t *setting,
					       struct forward *fwd,
					       struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_count(file, setting, "max_flows_per_source", "no limit",
				 &fwd->max_flows_per_source);
}

static int config_forward_freebind(struct config_file *file, const config_setting_t *setting,
				   struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fields;
	return config_file_bool(file, setting, "freebind", &fwd->freebind);
}

/*
 * allow / deny: a list or array of CIDR strings, appended to the forward's
 * rules in the order the file has them (libconfig keeps a group's order),
 * so that whichever list comes first is checked first.
 */
static int config_forward_acl(struct config_file *file, const config_setting_t *setting,
			      struct forward *fwd, bool allow)
{
	const char *key = allow ? "allow" : "deny";

	if (!config_setting_is_list(setting) && !config_setting_is_array(setting))
		return config_file_fail(file, setting,
					"%s must be a list of networks: [\"192.168.0.0/16\", "
					"\"2001:db8::/32\"]", key);
	for (int i = 0; i < config_setting_length(setting); i++) {
		const config_setting_t *elem = config_setting_get_elem(setting, (unsigned)i);
		const char *text = config_file_string(elem);
		char why[CONFIG_REASON_MAX];
		struct acl_entry entry;

		if (text == NULL)
			return config_file_fail(file, elem,
						"%s entry #%d must be a string: a network such as "
						"\"192.168.0.0/16\"", key, i + 1);
		if (acl_entry_parse(text, allow, &entry, why, sizeof why) < 0)
			return config_file_fail(file, elem, "%s entry %s", key, why);
		if (acl_append(&fwd->acl, &entry) < 0)
			return config_file_fail(file, elem,
						"allow and deny hold at most %d entries together",
						ACL_MAX_ENTRIES);
	}
	return 0;
}

static int config_forward_allow(struct config_file *file, const config_setting_t *setting,
				struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fields;
	return config_forward_acl(file, setting, fwd, true);
}

static int config_forward_deny(struct config_file *file, const config_setting_t *setting,
			       struct forward *fwd, struct config_forward_fields *fields)
{
	(void)fields;
	return config_forward_acl(file, setting, fwd, false);
}

static const struct {
	const char *name;
	config_forward_field_fn parse;
} config_forward_field_table[] = {
	{ "name", config_forward_name },
	{ "protocol", config_forward_protocol },
	{ "external_address", config_forward_external_address },
	{ "external_port", config_forward_external_port },
	{ "internal_ip", config_forward_internal_ip },
	{ "internal_port", config_forward_internal_port },
	{ "enabled", config_forward_enabled },
	{ "udp_idle_timeout", config_forward_udp_idle_timeout },
	{ "ftp", config_forward_ftp },
	{ "ftp_data_ports", config_forward_ftp_data_ports },
	{ "proxy_protocol", config_forward_proxy_protocol },
	{ "access_log", config_forward_access_log },
	{ "source", config_forward_source },
	{ "max_connections", config_forward_max_connections },
	{ "max_connections_per_source", config_forward_max_connections_per_source },
	{ "max_flows_per_source", config_forward_max_flows_per_source },
	{ "allow", config_forward_allow },
	{ "deny", config_forward_deny },
	{ "freebind", config_forward_freebind },
};

static config_forward_field_fn config_forward_field_lookup(const char *name)
{
	size_t count = sizeof config_forward_field_table / sizeof config_forward_field_table[0];

	for (size_t i = 0; i < count; i++) {
		if (strcmp(config_forward_field_table[i].name, name) == 0)
			return config_forward_field_table[i].parse;
	}
	return NULL;
}

/*
 * The name comes first, whatever its place in the group, so that every
 * other message can say which forward it is about.
 */
static int config_forward_read_name(struct config_file *file, const config_setting_t *group,
				    unsigned index, struct forward *fwd)
{
	const config_setting_t *setting = config_setting_get_member(group, "name");
	const char *text;
	const char *problem;

	snprintf(file->label, sizeof file->label, "forward #%u: ", index);
	if (setting == NULL)
		return 0;
	text = config_file_string(setting);
	if (text == NULL)
		return config_file_fail(file, setting, "name must be a string");
	problem = config_name_problem(text);
	if (problem != NULL)
		return config_file_fail(file, setting, "name %s", problem);
	snprintf(fwd->name, sizeof fwd->name, "%s", text);
	config_forward_label(fwd, file->label, sizeof file->label);
	return 0;
}

/* Required fields, the internal_port default and the width rule. */
static int config_forward_complete(struct config_file *file, const config_setting_t *group,
				   struct forward *fwd, struct config_forward_fields *fields)
{
	char why[CONFIG_REASON_MAX];

	if (!fields->has_protocol)
		return config_file_missing(file, group, "protocol", " (tcp, udp or both)");
	if (!fields->has_external_port)
		return config_file_missing(file, group, "external_port", "");
	if (!fields->has_internal_ip)
		return config_file_missing(file, group, "internal_ip", "");
	if (fwd->ftp && fwd->proto != FORWARD_TCP)
		return config_file_fail(file, fields->ftp,
					"ftp = true needs protocol = \"tcp\", not \"%s\" "
					"(the FTP helper works on TCP control connections)",
					forward_proto_name(fwd->proto));
	if (fields->ftp_data_ports != NULL && !fwd->ftp)
		return config_file_fail(file, fields->ftp_data_ports,
					"ftp_data_ports needs ftp = true");
	if (fwd->proxy_protocol == PROXY_V1 && (fwd->proto & FORWARD_UDP))
		return config_file_fail(file, fields->proxy_protocol,
					"proxy_protocol \"v1\" has no datagrams: protocol \"%s\" "
					"needs \"v2\"", forward_proto_name(fwd->proto));
	if (fwd->source_client && fwd->ftp)
		return config_file_fail(file, fields->source,
					"source = \"client\" does not go with ftp = true (the "
					"helper's data connections come from the relay)");
	if (fwd->proxy_protocol != PROXY_NONE && fwd->ftp)
		return config_file_fail(file, fields->proxy_protocol,
					"proxy_protocol does not go with ftp = true (the FTP "
					"helper's control connection carries no PROXY header)");
	/*
	 * An omitted internal_port equals external_port, which always passes
	 * the width rule: a failure below always has an internal_port to name.
	 */
	if (fields->internal_port == NULL)
		fields->internal = fields->external;
	if (config_forward_set_ports(fwd, &fields->external, "external_port", &fields->internal,
				     "internal_port", why, sizeof why) < 0)
		return config_file_fail(file, fields->internal_port, "%s", why);
	if (fwd->name[0] == '\0')
		config_default_name(fwd);
	config_file_where(file, group, fwd->origin, sizeof fwd->origin);
	return 0;
}

static int config_file_forward(struct config *cfg, struct config_file *file,
			       const config_setting_t *group, unsigned index)
{
	struct forward fwd;
	struct config_forward_fields fields = { .internal_port = NULL };

	config_forward_defaults(&fwd);
	file->label[0] = '\0';
	if (!config_setting_is_group(group))
		return config_file_fail(file, group, "forward #%u must be a group { ... }", index);
	if (config_forward_read_name(file, group, index, &fwd) < 0)
		return -1;
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *setting = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(setting);
		config_forward_field_fn parse = config_forward_field_lookup(name);

		if (parse == NULL)
			return config_file_fail(file, setting, "unknown field \"%s\"", name);
		if (parse(file, setting, &fwd, &fields) < 0)
			return -1;
	}
	if (config_forward_complete(file, group, &fwd, &fields) < 0)
		return -1;
	if (config_append_forward(cfg, &fwd) < 0)
		return config_file_fail(file, group, "out of memory");
	file->label[0] = '\0';
	return 0;
}

static int config_file_forwards(struct config *cfg, struct config_file *file,
				const config_setting_t *list)
{
	/* An array cannot hold groups in libconfig, but an empty [] is harmless. */
	if (!config_setting_is_list(list) && !config_setting_is_array(list))
		return config_file_fail(file, list,
					"forwards must be a list of groups: ( { ... }, ... )");
	for (int i = 0; i < config_setting_length(list); i++) {
		const config_setting_t *group = config_setting_get_elem(list, (unsigned)i);
		if (config_file_forward(cfg, file, group, (unsigned)i + 1) < 0)
			return -1;
	}
	return 0;
}

/* ---- the file: the admin endpoint ------------------------------------- */

/* Longest Unix socket path: sizeof sockaddr_un.sun_path (108) minus the NUL. */
#define CONFIG_UNIX_PATH_MAX 107

static bool config_addr_is_loopback(const struct net_addr *addr)
{
	struct net_addr plain = *addr;
	net_addr_unmap(&plain);
	if (net_addr_family(&plain) == AF_INET) {
		const struct sockaddr_in *v4 = (const struct sockaddr_in *)&plain.ss;
		return (ntohl(v4->sin_addr.s_addr) >> 24) == 127;
	}
	const struct sockaddr_in6 *v6 = (const struct sockaddr_in6 *)&plain.ss;
	return IN6_IS_ADDR_LOOPBACK(&v6->sin6_addr);
}

/* "IP:PORT", "[IPv6]:PORT" (numeric), or an absolute path: a Unix socket. */
static int config_file_admin_listen(struct config *cfg, struct config_file *file,
				    const config_setting_t *setting)
{
	const char *text = config_file_string(setting);
	char host[CONFIG_HOST_MAX];
	if (text == NULL)
		return config_file_fail(file, setting,
					"admin.listen must be a string: \"127.0.0.1:9330\" or an "
					"absolute Unix socket path");
	if (text[0] == '/') {
		if (strlen(text) > CONFIG_UNIX_PATH_MAX)
			return config_file_fail(file, setting,
						"admin.listen: a Unix socket path is at most %d "
						"bytes", CONFIG_UNIX_PATH_MAX);
		cfg->admin_unix = true;
		snprintf(cfg->admin_listen, sizeof cfg->admin_listen, "%s", text);
		return 0;
	}
	const char *colon = strrchr(text, ':');
	const char *start = text, *end = colon;
	if (text[0] == '[') {
		start = text + 1;
		end = colon != NULL && colon > text && colon[-1] == ']' ? colon - 1 : NULL;
	}
	char *stop = NULL;
	unsigned long port = colon != NULL ? strtoul(colon + 1, &stop, 10) : 0;
	if (end == NULL || end < start || (size_t)(end - start) >= sizeof host ||
	    colon[1] == '\0' || *stop != '\0' || port < 1 || port > 65535)
		return config_file_fail(file, setting,
					"admin.listen \"%s\" is not IP:PORT (\"127.0.0.1:9330\", "
					"\"[::1]:9330\") nor an absolute Unix socket path", text);
	memcpy(host, start, (size_t)(end - start));
	host[end - start] = '\0';
	if (net_addr_parse_ip(host, (uint16_t)port, &cfg->admin_addr) < 0)
		return config_file_fail(file, setting,
					"admin.listen \"%s\": \"%s\" is not a numeric IPv4 or IPv6 "
					"address", text, host);
	cfg->admin_unix = false;
	snprintf(cfg->admin_listen, sizeof cfg->admin_listen, "%s", text);
	return 0;
}

static int config_file_admin(struct config *cfg, struct config_file *file,
			     const config_setting_t *group)
{
	const config_setting_t *listen = NULL;
	if (!config_setting_is_group(group))
		return config_file_fail(file, group, "admin must be a group { ... }");
	/* The group as a whole: nothing of an earlier one stays. */
	cfg->admin_listen[0] = cfg->admin_token_file[0] = cfg->admin_rules_file[0] = '\0';
	cfg->admin_unix = false;
	for (int i = 0; i < config_setting_length(group); i++) {
		const config_setting_t *setting = config_setting_get_elem(group, (unsigned)i);
		const char *name = config_setting_name(setting);
		const char *text = config_file_string(setting);
		int rc = 0;

		if (strcmp(name, "listen") == 0) {
			listen = setting;
			rc = config_file_admin_listen(cfg, file, setting);
		} else if (strcmp(name, "token_file") == 0) {
			if (text == NULL || text[0] == '\0' ||
			    strlen(text) >= sizeof cfg->admin_token_file)
				rc = config_file_fail(file, setting,
						      "admin.token_file must be a non-empty path");
			else
				snprintf(cfg->admin_token_file, sizeof cfg->admin_token_file,
					 "%s", text);
		} else if (strcmp(name, "rules_file") == 0) {
			if (text == NULL || text[0] == '\0' ||
			    strlen(text) >= sizeof cfg->admin_rules_file)
				rc = config_file_fail(file, setting,
						      "admin.rules_file must be a non-empty path");
			else
				snprintf(cfg->admin_rules_file, sizeof cfg->admin_rules_file,
					 "%s", text);
		} else {
			rc = config_file_fail(file, setting, "unknown field \"admin.%s\"", name);
		}
		if (rc < 0)
			return -1;
	}
	if (listen == NULL)
		return config_file_fail(file, group,
					"admin.listen is required (\"127.0.0.1:9330\" or a Unix "
					"socket path)");
	/* Anyone who can reach a non-loopback port could read the rules and counters. */
	if (!cfg->admin_unix && cfg->admin_token_file[0] == '\0' &&
	    !config_addr_is_loopback(&cfg->admin_addr))
		return config_file_fail(file, listen,
					"admin.listen \"%s\" is not a loopback address: set "
					"admin.token_file, or listen on 127.0.0.1, ::1 or a Unix "
					"socket", cfg->admin_listen);
	return 0;
}

/* ---- the file: top level ----------------------------------------------- */

typedef int (*config_global_fn)(struct config *cfg, struct config_file *file,
				const config_setting_t *setting);

static const struct {
	const char *name;
	config_global_fn parse;
} config_global_table[] = {
	{ "wan_address", config_file_wan_address },
	{ "log_level", config_file_log_level },
	{ "workers", config_file_workers },
	{ "busy_poll", config_file_busy_poll },
	{ "shutdown_timeout", config_file_shutdown_timeout },
	{ "drain_timeout", config_file_drain_timeout },
	{ "max_connections", config_file_max_connections },
	{ "user", config_file_user },
	{ "group", config_file_group },
	{ "tcp", config_file_tcp },
	{ "udp", config_file_udp },
	{ "ftp", config_file_ftp },
	{ "admin", config_file_admin },
	{ "forwards", config_file_forwards },
};

static int config_file_global(struct config *cfg, struct config_file *file,
			      const config_setting_t *setting)
{
	size_t count = sizeof config_global_table / sizeof config_global_table[0];
	const char *name = config_setting_name(setting);

	for (size_t i = 0; i < count; i++) {
		if (strcmp(config_global_table[i].name, name) == 0)
			return config_global_table[i].parse(cfg, file, setting);
	}
	return config_file_fail(file, setting, "unknown field \"%s\"", name);
}

static int config_file_root(struct config *cfg, struct config_file *file,
			    const config_setting_t *root)
{
	for (int i = 0; i < config_setting_length(root); i++) {
		if (config_file_global(cfg, file, config_setting_get_elem(root, (unsigned)i)) < 0)
			return -1;
	}
	/* A numeric user with no entry has no primary group to fall back on. */
	if (file->user != NULL && !file->user_gid_known && !cfg->has_group)
		return config_file_fail(file, file->user,
					"user %s has no entry in the user database, so no primary "
					"group: set group too", cfg->user);
	return 0;
}

/*
 * Opens the file for libconfig, which would otherwise report an unreadable
 * file only as "file I/O error". Only a regular file is read: a FIFO would
 * block the start (or a reload) until a writer comes, and /dev/zero or a
 * terminal would be read without end. The check and the read use the same
 * descriptor, opened without blocking (a FIFO opens at once), so what is
 * read is what was checked.
 */
static FILE *config_file_open(const char *path, char *err, size_t err_len)
{
	struct stat st;
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
	int flags;
	FILE *stream;

	if (fd < 0) {
		config_fail(err, err_len, path, "", "cannot read: %s", strerror(errno));
		return NULL;
	}
	if (fstat(fd, &st) < 0) {
		config_fail(err, err_len, path, "", "cannot read: %s", strerror(errno));
		goto fail;
	}
	if (S_ISDIR(st.st_mode)) {
		config_fail(err, err_len, path, "", "cannot read: %s", strerror(EISDIR));
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		config_fail(err, err_len, path, "", "cannot read: is not a regular file (%s)",
			    S_ISFIFO(st.st_mode) ? "a FIFO" : S_ISCHR(st.st_mode) ? "a device" :
			    S_ISSOCK(st.st_mode) ? "a socket" : "a special file");
		goto fail;
	}
	flags = fcntl(fd, F_GETFL);
	if (flags < 0 || fcntl(fd, F_SETFL, flags & ~O_NONBLOCK) < 0) {
		config_fail(err, err_len, path, "", "cannot read: %s", strerror(errno));
		goto fail;
	}
	stream = fdopen(fd, "r");
	if (stream == NULL) {
		config_fail(err, err_len, path, "", "cannot read: %s", strerror(errno));
		goto fail;
	}
	return stream;
fail:
	close(fd);
	return NULL;
}

static int config_file_read_error(const config_t *lc, const char *path, char *err,
				  size_t err_len)
{
	const char *source = config_error_file(lc);
	const char *text = config_error_text(lc) != NULL ? config_error_text(lc) : "unknown error";
	char where[CONFIG_ORIGIN_MAX];

	if (config_error_type(lc) == CONFIG_ERR_FILE_IO)
		return config_fail(err, err_len, path, "", "cannot read: %s", text);
	snprintf(where, sizeof where, "%s:%d", source != NULL ? source : path,
		 config_error_line(lc));
	return config_fail(err, err_len, where, "", "syntax error: %s", text);
}

/* The rules file's top level: its forwards and nothing else. */
static int config_file_rules_root(struct config *cfg, struct config_file *file,
				  const config_setting_t *root)
{
	for (int i = 0; i < config_setting_length(root); i++) {
		const config_setting_t *setting = config_setting_get_elem(root, (unsigned)i);
		if (strcmp(config_setting_name(setting), "forwards") != 0)
			return config_file_fail(file, setting, "\"%s\": admin.rules_file holds "
						"forwards only", config_setting_name(setting));
		if (config_file_forwards(cfg, file, setting) < 0)
			return -1;
	}
	return 0;
}

/* Reads one file with `root` for its top level; a bad file adds no forwards. */
static int config_load_with(struct config *cfg, const char *path, const char *open_path,
			    char *err, size_t err_len,
			    int (*root)(struct config *, struct config_file *,
					const config_setting_t *))
{
	struct config_file file = { .path = path, .err = err, .err_len = err_len };
	size_t count_before = cfg->forward_count;
	config_t lc;
	int rc;

	FILE *stream = config_file_open(open_path, err, err_len);

	if (stream == NULL)
		return -1;
	config_init(&lc);
	/*
	 * config_read gives libconfig no file name: settings of this file have
	 * none (config_file_where names path), those of an @include their own.
	 */
	if (config_read(&lc, stream) != CONFIG_TRUE)
		rc = config_file_read_error(&lc, path, err, err_len);
	else
		rc = root(cfg, &file, config_root_setting(&lc));
	fclose(stream);
	/* Every string was copied out; nothing points into lc any more. */
	config_destroy(&lc);
	if (rc < 0)
		cfg->forward_count = count_before;   /* a bad file adds no forwards */
	return rc;
}

int config_load_file(struct config *cfg, const char *path, char *err, size_t err_len)
{
	return config_load_with(cfg, path, path, err, err_len, config_file_root);
}

int config_load_rules_file(struct config *cfg, const char *path, const char *read_path,
			   char *err, size_t err_len)
{
	struct stat st;
	if (read_path == NULL)
		read_path = path;
	if (stat(read_path, &st) < 0 && errno == ENOENT)
		return 0;   /* no rule added through the API yet */
	size_t first = cfg->forward_count;
	if (config_load_with(cfg, path, read_path, err, err_len, config_file_rules_root) < 0)
		return -1;
	for (size_t i = first; i < cfg->forward_count; i++)
		cfg->forwards[i].from_rules_file = true;
	return 0;
}

int config_read_forward(const struct config *cfg, const config_setting_t *group,
			const char *where, struct forward *out, char *err, size_t err_len,
			char *field, size_t field_len)
{
	struct config scratch = *cfg;
	struct config_file file = { .path = where, .err = err, .err_len = err_len,
				    .field = field, .field_len = field_len };
	int rc;

	field[0] = '\0';
	scratch.forwards = NULL;
	scratch.forward_count = 0;
	rc = config_file_forward(&scratch, &file, group, 1);
	if (rc == 0) {
		const char *failed_field = "";
		rc = config_finish_forward(&scratch, &scratch.forwards[0], err, err_len,
					   &failed_field);
		if (rc == 0)
			*out = scratch.forwards[0];
		else
			snprintf(field, field_len, "%s", failed_field);
	}
	free(scratch.forwards);
	return rc;
}
