/*
 * rules_doc.c - admin.rules_file as a document the API edits (rules_doc.h).
 */
#include "portrelay/rules_doc.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char rules_doc_header[] =
	"# admin.rules_file: forwarding rules made through portrelay's Port Forwarding page\n"
	"# and API. portrelay rewrites this file on every change (comments are not kept):\n"
	"# change these rules through the API, or move them into the configuration file.\n\n";

static int rules_doc_empty(struct rules_doc *doc)
{
	doc->forwards = config_setting_add(config_root_setting(&doc->lc), "forwards",
					   CONFIG_TYPE_LIST);
	return doc->forwards != NULL ? 0 : -1;
}

int rules_doc_load(struct rules_doc *doc, const char *path, char *err, size_t err_len)
{
	struct stat st;

	config_init(&doc->lc);
	snprintf(doc->path, sizeof doc->path, "%s", path);
	doc->forwards = NULL;
	if (stat(path, &st) < 0 && errno == ENOENT) {
		if (rules_doc_empty(doc) == 0)
			return 0;
		snprintf(err, err_len, "out of memory");
		goto fail;
	}
	if (config_read_file(&doc->lc, path) != CONFIG_TRUE) {
		if (config_error_type(&doc->lc) == CONFIG_ERR_FILE_IO)
			snprintf(err, err_len, "%s: cannot read: %s", path, strerror(errno));
		else
			snprintf(err, err_len, "%s:%d: %s", path, config_error_line(&doc->lc),
				 config_error_text(&doc->lc));
		goto fail;
	}
	doc->forwards = config_lookup(&doc->lc, "forwards");
	if (doc->forwards == NULL && rules_doc_empty(doc) == 0)
		return 0;
	if (doc->forwards == NULL || !config_setting_is_list(doc->forwards)) {
		snprintf(err, err_len, "%s: forwards must be a list of groups: ( { ... }, ... )",
			 path);
		goto fail;
	}
	return 0;
fail:
	config_destroy(&doc->lc);
	doc->forwards = NULL;
	return -1;
}

void rules_doc_free(struct rules_doc *doc)
{
	config_destroy(&doc->lc);
	doc->forwards = NULL;
}

config_setting_t *rules_doc_find(const struct rules_doc *doc, const char *name, int *index)
{
	for (int i = 0; i < config_setting_length(doc->forwards); i++) {
		config_setting_t *group = config_setting_get_elem(doc->forwards, (unsigned)i);
		const char *group_name = NULL;
		if (config_setting_is_group(group) &&
		    config_setting_lookup_string(group, "name", &group_name) == CONFIG_TRUE &&
		    strcmp(group_name, name) == 0) {
			if (index != NULL)
				*index = i;
			return group;
		}
	}
	return NULL;
}

config_setting_t *rules_doc_append(struct rules_doc *doc)
{
	if (config_setting_length(doc->forwards) >= RULES_DOC_MAX)
		return NULL;
	return config_setting_add(doc->forwards, NULL, CONFIG_TYPE_GROUP);
}

int rules_doc_remove(struct rules_doc *doc, int index)
{
	return config_setting_remove_elem(doc->forwards, (unsigned)index) == CONFIG_TRUE ? 0 : -1;
}

int rules_doc_set_enabled(config_setting_t *group, bool enabled)
{
	config_setting_t *setting = config_setting_get_member(group, "enabled");
	if (setting != NULL && config_setting_type(setting) != CONFIG_TYPE_BOOL) {
		config_setting_remove(group, "enabled");
		setting = NULL;
	}
	if (setting == NULL)
		setting = config_setting_add(group, "enabled", CONFIG_TYPE_BOOL);
	return setting != NULL && config_setting_set_bool(setting, enabled) == CONFIG_TRUE ? 0 : -1;
}

int rules_doc_write_candidate(const struct rules_doc *doc, char *candidate, size_t candidate_len,
			      char *err, size_t err_len)
{
	if ((size_t)snprintf(candidate, candidate_len, "%s.new-XXXXXX", doc->path) >=
	    candidate_len) {
		snprintf(err, err_len, "%s: the path is too long", doc->path);
		return -1;
	}
	int fd = mkostemp(candidate, O_CLOEXEC);
	if (fd < 0) {
		snprintf(err, err_len, "cannot create a file beside %s: %s", doc->path,
			 strerror(errno));
		return -1;
	}
	FILE *out = fdopen(fd, "w");
	if (out == NULL) {
		snprintf(err, err_len, "cannot write %s: %s", candidate, strerror(errno));
		close(fd);
		unlink(candidate);
		return -1;
	}
	fputs(rules_doc_header, out);
	config_write(&doc->lc, out);
	bool failed = fflush(out) != 0 || ferror(out) != 0 || fsync(fd) != 0;
	int error = errno;
	if (fclose(out) != 0 && !failed) {
		failed = true;
		error = errno;
	}
	if (failed) {
		snprintf(err, err_len, "cannot write %s: %s", candidate, strerror(error));
		unlink(candidate);
		return -1;
	}
	return 0;
}
