/* Tests for daemon/tpmidd/provision-driver.c: the driver runs against a fake
 * TPM worker, a fake cloud, a fake timer and clock and an in-memory state file
 * (its io table), so every operation it performs can be checked and every
 * completion chosen: a whole provisioning, the 401 challenge, a stale
 * challenge retried, a 429 with Retry-After, a permanent error, reprovision
 * while busy, reports in OnErrorOnly and a mode change at reload. The DPS
 * answers are the real wire format (lib/dps parses them). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "provision-driver.h"
#include "state.h"
#include "util.h"

/* ---- the fake world ---- */

struct fake {
        /* TPM: at most one job in flight (the driver's contract) */
        struct tpm_job *job;
        unsigned jobs;
        int tpm_submit_r;
        /* cloud: at most one request in flight */
        bool req_busy;
        char method[8];
        char url[512];
        char auth[512];
        char body[4096];
        cloud_cb cb;
        void *cb_userdata;
        uint64_t next_id, req_id;
        unsigned requests, cancels;
        /* timer */
        bool timer_armed;
        uint64_t timer_ms;
        void (*timer_cb)(void *);
        void *timer_userdata;
        /* state file */
        int load_r;
        struct tpmid_state stored;
        unsigned saves;
        int save_r;
        /* clocks */
        uint64_t now_ms;
        int64_t now_unix;
        bool closed;
        unsigned status_calls;
        /* TPM_JOB_SET_SERVING: the worker's slot for the socket's jobs */
        struct tpm_job *set_job;
        uint32_t serving_index;
        unsigned serving_sets;
};

/* Complete a SET_SERVING job waiting in the fake worker (it was queued before
 * whatever comes next, as in the real FIFO). */
static void flush_set_job(struct fake *f) {
        struct tpm_job *job = f->set_job;
        if (!job)
                return;
        f->set_job = NULL;
        job->r = 0;
        job->done(job, job->userdata);
}

static int f_tpm_submit(void *userdata, struct tpm_job *job) {
        struct fake *f = userdata;
        if (job->kind == TPM_JOB_SET_SERVING) {
                assert_null(f->set_job); /* one at a time */
                f->set_job = job;
                f->serving_index = job->key_index;
                f->serving_sets++;
                return 0;
        }
        assert_null(f->job); /* one operation at a time */
        if (f->tpm_submit_r < 0)
                return f->tpm_submit_r;
        f->job = job;
        f->jobs++;
        return 0;
}

static int f_cloud_send(void *userdata, const struct cloud_request *req, cloud_cb cb, void *cb_userdata,
                        uint64_t *ret_id) {
        struct fake *f = userdata;
        assert_false(f->req_busy);
        snprintf(f->method, sizeof(f->method), "%s", req->method);
        snprintf(f->url, sizeof(f->url), "%s", req->url);
        snprintf(f->auth, sizeof(f->auth), "%s", req->authorization ? req->authorization : "");
        snprintf(f->body, sizeof(f->body), "%.*s", (int)req->body_len, req->body ? req->body : "");
        f->cb = cb;
        f->cb_userdata = cb_userdata;
        f->req_busy = true;
        f->req_id = ++f->next_id;
        f->requests++;
        *ret_id = f->req_id;
        return 0;
}

static void f_cloud_cancel(void *userdata, uint64_t id) {
        struct fake *f = userdata;
        assert_true(f->req_busy && id == f->req_id);
        f->req_busy = false;
        f->cancels++;
}

static void f_timer_start(void *userdata, uint64_t ms, void (*cb)(void *), void *cb_userdata) {
        struct fake *f = userdata;
        f->timer_armed = true;
        f->timer_ms = ms;
        f->timer_cb = cb;
        f->timer_userdata = cb_userdata;
}

static void f_timer_stop(void *userdata) {
        struct fake *f = userdata;
        f->timer_armed = false;
}

static int f_state_load(void *userdata, const char *path, struct tpmid_state *out) {
        struct fake *f = userdata;
        assert_non_null(strstr(path, STATE_FILE_NAME));
        if (f->load_r < 0)
                return f->load_r;
        *out = f->stored;
        return 0;
}

static int f_state_save(void *userdata, const char *path, const struct tpmid_state *st) {
        struct fake *f = userdata;
        f->saves++;
        if (f->save_r < 0)
                return f->save_r;
        f->stored = *st;
        f->load_r = 0;
        return 0;
}

static uint64_t f_now_ms(void *userdata) {
        return ((struct fake *)userdata)->now_ms;
}

static int64_t f_now_unix(void *userdata) {
        return ((struct fake *)userdata)->now_unix;
}

static void f_close(void *userdata, void (*done)(void *), void *done_userdata) {
        struct fake *f = userdata;
        f->closed = true;
        f->req_busy = false;
        f->timer_armed = false;
        done(done_userdata);
}

static void status_cb(void *userdata) {
        ((struct fake *)userdata)->status_calls++;
}

/* ---- driving it ---- */

#define REGID "dev-1"
#define SCOPE "0ne00000001"
#define HUB "hub1.azure-devices.net"
#define HUB2 "hub2.azure-devices.net"
#define CHALLENGE_B64 "AAECAw=="  /* 00 01 02 03 */
#define ASSIGNED_B64 "BAUGBw=="   /* 04 05 06 07 */

struct world {
        uint32_t stage; /* the current run's staging slot (key index) */
        struct fake f;
        struct tpmid_config cfg;
        struct tpm_keys keys;
        struct prov_driver *d;
};

static void world_init(struct world *w, enum prov_mode mode) {
        memset(w, 0, sizeof(*w));
        w->stage = 0x101; /* slot B until a run's challenge import says otherwise */
        w->cfg.auto_reprovisioning_mode = mode;
        w->cfg.cloud_timeout_sec = 70;
        w->cfg.provisioning.source = CONFIG_SOURCE_DPS;
        w->cfg.provisioning.global_endpoint = (char *)"https://dps.example/";
        w->cfg.provisioning.id_scope = (char *)SCOPE;
        w->cfg.provisioning.registration_id = (char *)REGID;
        w->cfg.tpm.auth_key_index = 0x100;
        w->cfg.state_dir = (char *)"/nonexistent/state";
        memcpy(w->keys.ek.buf, "\x00\x01\x02\x03 ek", 7);
        w->keys.ek.len = 7;
        memcpy(w->keys.srk.buf, "\x00\x01 srk", 6);
        w->keys.srk.len = 6;
        w->f.load_r = -ENOENT;
        w->f.now_ms = 1000000;
        w->f.now_unix = 1700000000;
        const struct prov_io io = {
                .userdata = &w->f,
                .tpm_submit = f_tpm_submit,
                .cloud_send = f_cloud_send,
                .cloud_cancel = f_cloud_cancel,
                .timer_start = f_timer_start,
                .timer_stop = f_timer_stop,
                .state_load = f_state_load,
                .state_save = f_state_save,
                .now_ms = f_now_ms,
                .now_unix = f_now_unix,
                .close = f_close,
        };
        assert_int_equal(prov_driver_new_with_io(&w->cfg, &io, &w->d), 0);
        prov_driver_set_status_cb(w->d, status_cb, &w->f);
}

static void world_done(struct world *w) {
        flush_set_job(&w->f);
        prov_driver_close(w->d);
        assert_true(w->f.closed);
}

/* A saved identity that matches the config and this TPM. */
static void save_identity(struct world *w, const char *hub) {
        struct state_config_input in = {
                .global_endpoint = w->cfg.provisioning.global_endpoint,
                .id_scope = SCOPE,
                .registration_id = REGID,
        };
        memset(&w->f.stored, 0, sizeof(w->f.stored));
        snprintf(w->f.stored.hub, sizeof(w->f.stored.hub), "%s", hub);
        snprintf(w->f.stored.device_id, sizeof(w->f.stored.device_id), "%s", REGID);
        snprintf(w->f.stored.registration_id, sizeof(w->f.stored.registration_id), "%s", REGID);
        snprintf(w->f.stored.id_scope, sizeof(w->f.stored.id_scope), "%s", SCOPE);
        assert_int_equal(state_ek_digest(w->keys.ek.buf, w->keys.ek.len, w->f.stored.ek_digest), 0);
        assert_int_equal(state_config_digest(&in, w->f.stored.config_digest), 0);
        w->f.load_r = 0;
}

static const char *state(struct world *w) {
        return prov_state_to_string(prov_driver_state(w->d));
}

/* The TPM job in flight is kind, on the key index given; the driver always
 * names its slot. */
static void expect_job_at(struct world *w, enum tpm_job_kind kind, uint32_t index) {
        struct tpm_job *job = w->f.job;
        assert_non_null(job);
        assert_int_equal(job->kind, kind);
        assert_true(job->has_key_index);
        assert_int_equal(job->key_index, index);
}

/* ... on this run's staging slot (w->stage), or slot A (0x100, the configured
 * index: the saved identities of these tests). */
static void expect_job(struct world *w, enum tpm_job_kind kind, bool staging) {
        expect_job_at(w, kind, staging ? w->stage : 0x100);
}

static void complete_job(struct world *w, int r, bool present) {
        flush_set_job(&w->f);
        struct tpm_job *job = w->f.job;
        assert_non_null(job);
        w->f.job = NULL;
        job->r = r;
        job->present = present;
        if (r < 0)
                snprintf(job->err.msg, sizeof(job->err.msg), "TPM2_Import: TPM_RC_INTEGRITY");
        if (job->kind == TPM_JOB_SIGN)
                memset(job->digest, 0xab, sizeof(job->digest));
        job->done(job, job->userdata);
}

/* LOAD_STATE with a saved identity in slot a: its key is there; the other
 * slot holds one too or not. */
static void found_key(struct world *w, bool other) {
        expect_job(w, TPM_JOB_HAS_KEY, false);
        complete_job(w, 0, true);
        expect_job(w, TPM_JOB_HAS_KEY, true);
        complete_job(w, 0, other);
}

static void expect_import(struct world *w, bool challenge_slot, const uint8_t blob[4]) {
        expect_job(w, TPM_JOB_IMPORT, challenge_slot);
        assert_int_equal(w->f.job->in_len, 4);
        assert_memory_equal(w->f.job->in, blob, 4);
}

static void sign(struct world *w, bool challenge_slot) {
        expect_job(w, TPM_JOB_SIGN, challenge_slot);
        complete_job(w, 0, false);
}

#define NO_AUTH NULL
#define DPS_AUTH "&skn=registration"                     /* a DPS SAS token */
#define HUB_AUTH "SharedAccessSignature sr=" HUB "%2fdevices%2f" REGID "&sig=" /* a device token, no skn */

/* The request in flight is method url_part..., with an Authorization that
 * contains auth_part (NULL: none). */
static void expect_request(struct world *w, const char *method, const char *url_part, const char *auth_part) {
        assert_true(w->f.req_busy);
        assert_string_equal(w->f.method, method);
        if (!strstr(w->f.url, url_part))
                fail_msg("request %s %s, expected %s", w->f.method, w->f.url, url_part);
        if (!auth_part)
                assert_string_equal(w->f.auth, "");
        else if (!strstr(w->f.auth, auth_part))
                fail_msg("Authorization %s, expected %s", w->f.auth, auth_part);
        if (auth_part && strcmp(auth_part, HUB_AUTH) == 0)
                assert_null(strstr(w->f.auth, "skn="));
}

static void reply(struct world *w, long status, const char *body, const char *retry_after) {
        struct cloud_response resp = {
                .error_msg = "",
                .status = status,
                .body = body ? body : "",
                .body_len = body ? strlen(body) : 0,
                .retry_after = retry_after,
        };
        assert_true(w->f.req_busy);
        w->f.req_busy = false;
        w->f.cb(&resp, w->f.cb_userdata);
}

/* An answer with a Date header. */
static void reply_dated(struct world *w, long status, const char *body, const char *date) {
        struct cloud_response resp = {
                .error_msg = "",
                .status = status,
                .body = body ? body : "",
                .body_len = body ? strlen(body) : 0,
                .date = date,
        };
        assert_true(w->f.req_busy);
        w->f.req_busy = false;
        w->f.cb(&resp, w->f.cb_userdata);
}

static void reply_error(struct world *w, int error, const char *msg) {
        struct cloud_response resp = {.error = error, .error_msg = msg, .body = "", .body_len = 0};
        assert_true(w->f.req_busy);
        w->f.req_busy = false;
        w->f.cb(&resp, w->f.cb_userdata);
}

static void fire_timer(struct world *w) {
        assert_true(w->f.timer_armed);
        w->f.timer_armed = false;
        w->f.now_ms += w->f.timer_ms;
        w->f.now_unix += (int64_t)(w->f.timer_ms / 1000);
        w->f.timer_cb(w->f.timer_userdata);
}

static const uint8_t challenge_blob[4] = {0, 1, 2, 3};
static const uint8_t assigned_blob[4] = {4, 5, 6, 7};

static const char *assigned_body(const char *hub, bool with_key) {
        static char buf[1024];
        snprintf(buf, sizeof(buf),
                 "{\"operationId\":\"op-1\",\"status\":\"assigned\",\"registrationState\":{"
                 "\"registrationId\":\"" REGID "\",\"assignedHub\":\"%s\",\"deviceId\":\"" REGID "\","
                 "\"status\":\"assigned\",\"substatus\":\"initialAssignment\"%s}}",
                 hub, with_key ? ",\"tpm\":{\"authenticationKey\":\"" ASSIGNED_B64 "\"}" : "");
        return buf;
}

/* From REGISTERING (the first PUT in flight) to the challenge import done and
 * the second PUT in flight. */
static void challenge(struct world *w) {
        expect_request(w, "PUT", "/" SCOPE "/registrations/" REGID "/register?api-version=", NO_AUTH);
        assert_non_null(strstr(w->f.body, "\"endorsementKey\""));
        reply(w, 401, "{\"authenticationKey\":\"" CHALLENGE_B64 "\",\"keyName\":\"registration\"}", NULL);
        assert_string_equal(state(w), "importing-challenge");
        /* the challenge goes to the staging slot: B next to a served key in A, A with none */
        assert_non_null(w->f.job);
        w->stage = w->f.job->key_index;
        assert_true(w->stage == 0x100 || w->stage == 0x101);
        expect_import(w, true, challenge_blob);
        complete_job(w, 0, false);
        assert_string_equal(state(w), "authenticating");
        sign(w, true); /* the second PUT is signed with the challenge key */
        expect_request(w, "PUT", "/registrations/" REGID "/register?api-version=", DPS_AUTH);
        assert_null(strstr(w->f.body, "endorsementKey"));
}

/* From the second PUT in flight to provisioned on hub. */
static void finish(struct world *w, const char *hub) {
        reply(w, 202, "{\"operationId\":\"op-1\",\"status\":\"assigning\"}", "1");
        assert_string_equal(state(w), "polling");
        assert_true(w->f.timer_armed);
        assert_int_equal(w->f.timer_ms, 1000);
        assert_null(w->f.job);
        fire_timer(w);
        sign(w, true); /* so are the polls */
        expect_request(w, "GET", "/registrations/" REGID "/operations/op-1?api-version=", DPS_AUTH);
        reply(w, 200, assigned_body(hub, true), NULL);
        assert_string_equal(state(w), "importing-final");
        expect_import(w, true, assigned_blob); /* the assigned key goes to the staging slot too */
        unsigned saves = w->f.saves;
        complete_job(w, 0, false);
        /* then the state names it, then the old key goes */
        assert_int_equal(w->f.saves, saves + 1);
        assert_string_equal(w->f.stored.hub, hub);
        assert_int_equal(w->f.stored.key_slot, w->stage == 0x101 ? STATE_KEY_SLOT_B : STATE_KEY_SLOT_A);
        assert_string_equal(state(w), "retiring-old-key");
        expect_job_at(w, TPM_JOB_EVICT, w->stage ^ 1); /* the other slot */
        complete_job(w, 0, true);
        assert_string_equal(state(w), "provisioned");
        flush_set_job(&w->f);
        if (w->stage == 0x101)
                assert_int_equal(w->f.serving_index, 0x101); /* the socket signs with the new key */
        else
                assert_int_equal(w->f.serving_sets, 0); /* A served all along */
        assert_false(w->f.req_busy);
        assert_false(w->f.timer_armed);
        assert_null(w->f.job);
}

static void start(struct world *w) {
        assert_int_equal(prov_driver_start(w->d, &w->keys), 0);
}

static void test_whole_provisioning(void **unused) {
        struct world w;
        struct api_status st = {0};
        const char *hub, *dev;

        world_init(&w, PROV_MODE_DYNAMIC);
        assert_int_equal(prov_driver_reprovision(w.d), -EAGAIN); /* not started */
        assert_false(prov_driver_identity(w.d, &hub, &dev));
        start(&w);
        assert_string_equal(prov_driver_registration_id(w.d), REGID);
        assert_string_equal(state(&w), "registering"); /* no saved identity: no TPM lookup */
        assert_int_equal(w.f.jobs, 0);
        assert_false(prov_driver_identity(w.d, &hub, &dev));
        challenge(&w);
        assert_int_equal(w.stage, 0x100); /* nothing served: the hub key goes to A */
        finish(&w, HUB);
        assert_true(prov_driver_identity(w.d, &hub, &dev));
        assert_string_equal(hub, HUB);
        assert_string_equal(dev, REGID);
        prov_driver_fill_status(w.d, &st);
        assert_string_equal(st.provisioning_state, "provisioned");
        assert_true(st.has_last_result);
        assert_string_equal(st.last_status, "assigned");
        assert_int_equal(st.next_retry_at, 0);
        assert_non_null(strstr(prov_driver_status_text(w.d), "provisioned: hub " HUB));
        assert_true(w.f.status_calls > 5);
        assert_int_equal(w.f.cancels, 0);
        assert_int_equal(w.f.requests, 3);
        world_done(&w);

        /* an assignment without its own key: the challenge key in the staging slot is the
         * hub key; no import, no NV write but the challenge's */
        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        challenge(&w);
        reply(&w, 200, assigned_body(HUB, false), NULL); /* 200 to the second PUT: no polls */
        assert_int_equal(w.f.saves, 1);
        assert_int_equal(w.f.stored.key_slot, STATE_KEY_SLOT_A);
        assert_true(prov_driver_identity(w.d, &hub, &dev));
        expect_job_at(&w, TPM_JOB_EVICT, 0x101);
        complete_job(&w, 0, false);
        assert_string_equal(state(&w), "provisioned");
        world_done(&w);
}

static void test_saved_identity(void **unused) {
        struct world w;
        const char *hub, *dev;

        /* Dynamic: serve it once its key is found, then check it with the hub */
        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        start(&w);
        assert_string_equal(state(&w), "loading-state");
        found_key(&w, false);
        assert_true(prov_driver_identity(w.d, &hub, &dev));
        assert_string_equal(state(&w), "checking-hub");
        sign(&w, false); /* the hub check is signed with the serving key */
        expect_request(&w, "GET", "https://" HUB "/devices/" REGID "/messages/deviceBound?api-version=2020-03-13", HUB_AUTH);
        reply(&w, 403, NULL, NULL);
        assert_string_equal(state(&w), "registering"); /* the device moved */
        assert_true(prov_driver_identity(w.d, &hub, &dev)); /* still served meanwhile */
        challenge(&w);
        assert_int_equal(w.stage, 0x101); /* next to the served key in A */
        finish(&w, HUB2);
        assert_true(prov_driver_identity(w.d, &hub, &dev));
        assert_string_equal(hub, HUB2);
        world_done(&w);

        /* the hub unreachable, or a 5xx: no evidence, keep serving */
        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        start(&w);
        found_key(&w, false);
        sign(&w, false);
        reply_error(&w, -ETIMEDOUT, "Operation timed out");
        assert_string_equal(state(&w), "provisioned");
        assert_int_equal(w.f.requests, 1);
        world_done(&w);

        /* the key is gone: not served, provision */
        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        start(&w);
        complete_job(&w, 0, false);
        assert_false(prov_driver_identity(w.d, &hub, &dev));
        assert_string_equal(state(&w), "registering");
        world_done(&w);

        /* a corrupt file: provision */
        world_init(&w, PROV_MODE_DYNAMIC);
        w.f.load_r = -EBADMSG;
        start(&w);
        assert_int_equal(w.f.jobs, 0);
        assert_string_equal(state(&w), "registering");
        world_done(&w);

        /* AlwaysOnStartup: DPS runs, the saved identity is served meanwhile */
        world_init(&w, PROV_MODE_ALWAYS_ON_STARTUP);
        save_identity(&w, HUB);
        start(&w);
        found_key(&w, false);
        assert_string_equal(state(&w), "registering");
        assert_true(prov_driver_identity(w.d, &hub, &dev));
        world_done(&w);
}

/* Startup recovery after a crashed key swap: the driver looks at both slots
 * and removes the key the state file does not name, before anything else. */
static void test_startup_recovery(void **unused) {
        struct world w;
        const char *hub, *dev;

        /* the file names B (the swap's state write happened), A is still there: finish it */
        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        w.f.stored.key_slot = STATE_KEY_SLOT_B;
        start(&w);
        expect_job(&w, TPM_JOB_HAS_KEY, true);
        complete_job(&w, 0, true);
        expect_job(&w, TPM_JOB_HAS_KEY, false);
        complete_job(&w, 0, true);
        assert_string_equal(state(&w), "recovering");
        assert_true(prov_driver_identity(w.d, &hub, &dev)); /* served from B already */
        expect_job(&w, TPM_JOB_EVICT, false);
        assert_int_equal(w.f.serving_index, 0x101); /* the socket was switched before the evict */
        complete_job(&w, 0, true);
        assert_string_equal(state(&w), "checking-hub");
        sign(&w, true); /* the hub check is signed with B */
        world_done(&w);

        /* the file names A, B holds a key (the swap died before its state write): undo it */
        world_init(&w, PROV_MODE_ON_ERROR_ONLY);
        save_identity(&w, HUB);
        start(&w);
        found_key(&w, true);
        assert_string_equal(state(&w), "recovering");
        expect_job(&w, TPM_JOB_EVICT, true);
        complete_job(&w, -EIO, false); /* a failure only leaves the key for the next start */
        assert_string_equal(state(&w), "provisioned");
        assert_int_equal(w.f.serving_sets, 0); /* A serves, as the worker started */
        world_done(&w);

        /* the file names B, B is gone: provision, staging in A */
        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        w.f.stored.key_slot = STATE_KEY_SLOT_B;
        start(&w);
        expect_job(&w, TPM_JOB_HAS_KEY, true);
        complete_job(&w, 0, false);
        assert_false(prov_driver_identity(w.d, &hub, &dev));
        assert_string_equal(state(&w), "registering");
        reply(&w, 401, "{\"authenticationKey\":\"" CHALLENGE_B64 "\"}", NULL);
        expect_job_at(&w, TPM_JOB_IMPORT, 0x101); /* nothing served: B, the serving slot, stages */
        /* a driver closed with a job in flight is freed when the job ends */
        struct tpm_job *job = w.f.job;
        world_done(&w);
        job->r = -ECANCELED;
        job->done(job, job->userdata);
}

/* A 401 without a challenge: with a DPS error it is DPS's verdict. */
static void test_401_without_challenge(void **unused) {
        struct world w;
        struct api_status st = {0};

        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        reply(&w, 401, "{\"errorCode\":401002,\"message\":\"Enrollment is disabled\"}", NULL);
        assert_string_equal(state(&w), "failed");
        assert_false(w.f.timer_armed);
        assert_null(w.f.job);
        prov_driver_fill_status(w.d, &st);
        assert_true(st.last_error_code == 401002);
        assert_non_null(strstr(st.last_message, "Enrollment is disabled"));
        world_done(&w);

        /* without one: some proxy; retry */
        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        reply(&w, 401, "<html>no</html>", NULL);
        assert_string_equal(state(&w), "backing-off");
        assert_true(w.f.timer_armed);
        world_done(&w);
}

/* The second PUT's SAS refused: a new run, up to PROV_STALE_CHALLENGE_RUNS
 * runs, then DPS's verdict. */
static void test_stale_challenge(void **unused) {
        const char *refusal = "{\"errorCode\":401002,\"trackingId\":\"t\",\"message\":\"Unauthorized\"}";
        struct world w;
        struct api_status st = {0};

        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        for (unsigned i = 1; i < PROV_STALE_CHALLENGE_RUNS; i++) {
                challenge(&w);
                reply(&w, 401, refusal, NULL);
                assert_string_equal(state(&w), "backing-off");
                assert_true(w.f.timer_armed);
                prov_driver_fill_status(w.d, &st);
                assert_string_equal(st.last_status, "error");
                fire_timer(&w);
                assert_string_equal(state(&w), "registering"); /* a whole new run, first PUT first */
        }
        challenge(&w);
        finish(&w, HUB);
        assert_int_equal(w.f.requests, 2 * (PROV_STALE_CHALLENGE_RUNS - 1) + 3); /* the last run polls once */
        world_done(&w);

        /* refused every time: DPS's verdict, no more requests */
        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        for (unsigned i = 1; i < PROV_STALE_CHALLENGE_RUNS; i++) {
                challenge(&w);
                reply(&w, 401, refusal, NULL);
                fire_timer(&w);
        }
        challenge(&w);
        reply(&w, 401, refusal, NULL);
        assert_string_equal(state(&w), "failed");
        assert_false(w.f.timer_armed);
        assert_false(w.f.req_busy);
        prov_driver_fill_status(w.d, &st);
        assert_string_equal(st.last_status, "failed");
        assert_true(st.last_error_code == 401002);
        assert_int_equal(w.f.requests, 2 * PROV_STALE_CHALLENGE_RUNS);
        world_done(&w);
}

/* Issue 14: DPS refuses our SAS while the clock is a day behind its Date:
 * backed off and retried, never "failed", the skew in status; a clock step
 * retries at once. With DPS's Date matching the clock, the old rules hold
 * (test_stale_challenge). */
static void test_clock_skew(void **unused) {
        const char *refusal = "{\"errorCode\":401002,\"trackingId\":\"t\",\"message\":\"Unauthorized\"}";
        struct world w;
        struct api_status st = {0};

        world_init(&w, PROV_MODE_DYNAMIC);
        w.f.now_unix = 1700000000 - 86400; /* DPS says Tue, 14 Nov 2023 22:13:20 GMT */
        start(&w);
        for (unsigned i = 0; i < 2 * PROV_STALE_CHALLENGE_RUNS; i++) {
                challenge(&w);
                reply_dated(&w, 401, refusal, "Tue, 14 Nov 2023 22:13:20 GMT");
                assert_string_equal(state(&w), "backing-off");
                assert_true(w.f.timer_armed);
                prov_driver_fill_status(w.d, &st);
                assert_true(st.has_clock_skew);
                assert_true(st.clock_skew_sec < -86400 + 600 && st.clock_skew_sec > -86400 - 600); /* timers move our clock */
                assert_string_equal(st.last_status, "error");
                assert_non_null(strstr(st.last_message, "the clock is off by -"));
                if (i % 2)
                        fire_timer(&w);
                else
                        prov_driver_clock_stepped(w.d); /* retries now, the backoff timer stopped */
                assert_false(w.f.timer_armed);
                assert_string_equal(state(&w), "registering");
        }
        /* the clock is right again */
        w.f.now_unix = 1700000000;
        challenge(&w);
        finish(&w, HUB);
        prov_driver_fill_status(w.d, &st);
        assert_false(st.has_clock_skew);
        /* settled: a clock step starts nothing */
        unsigned requests = w.f.requests;
        prov_driver_clock_stepped(w.d);
        assert_string_equal(state(&w), "provisioned");
        assert_int_equal(w.f.requests, requests);
        world_done(&w);
}

/* Issue 14: a failed save is retried until it succeeds, always with the
 * identity being served; status says "identity not persisted" meanwhile. */
static void test_save_retried(void **unused) {
        struct world w;
        struct api_status st = {0};

        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        challenge(&w);
        w.f.save_r = -ENOSPC;
        reply(&w, 202, "{\"operationId\":\"op-1\",\"status\":\"assigning\"}", "1");
        fire_timer(&w);
        sign(&w, true);
        reply(&w, 200, assigned_body(HUB, true), NULL);
        complete_job(&w, 0, false);
        assert_int_equal(w.f.saves, 1);
        assert_string_equal(state(&w), "provisioned");
        prov_driver_fill_status(w.d, &st);
        assert_true(st.not_persisted);
        assert_non_null(strstr(st.last_message, "identity not persisted"));
        assert_non_null(strstr(prov_driver_status_text(w.d), "identity not persisted"));
        /* still full */
        assert_true(w.f.timer_armed);
        fire_timer(&w);
        assert_int_equal(w.f.saves, 2);
        assert_true(w.f.timer_armed);
        /* space again */
        w.f.save_r = 0;
        fire_timer(&w);
        complete_job(&w, 0, false); /* saved: the key of the slot the file no longer names goes */
        assert_int_equal(w.f.saves, 3);
        assert_string_equal(w.f.stored.hub, HUB);
        assert_false(w.f.timer_armed);
        prov_driver_fill_status(w.d, &st);
        assert_false(st.not_persisted);
        assert_string_equal(st.last_status, "assigned");
        assert_int_equal(w.f.requests, 3); /* no DPS request was needed */

        /* a move while full: the retry saves the new hub */
        w.f.save_r = -ENOSPC;
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        challenge(&w);
        reply(&w, 200, assigned_body("hub2.azure-devices.net", true), NULL);
        complete_job(&w, 0, false);
        assert_string_equal(w.f.stored.hub, HUB); /* the file still names the old hub */
        w.f.save_r = 0;
        fire_timer(&w);
        complete_job(&w, 0, false);
        assert_string_equal(w.f.stored.hub, "hub2.azure-devices.net");
        assert_string_equal(state(&w), "provisioned");
        world_done(&w);
}

static void test_429_retry_after(void **unused) {
        struct world w;
        struct api_status st = {0};

        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        reply(&w, 429, "{\"errorCode\":429001,\"message\":\"Throttled\"}", "120");
        assert_string_equal(state(&w), "backing-off");
        assert_true(w.f.timer_armed);
        assert_int_equal(w.f.timer_ms, 120000); /* the server's floor beats the 2 s ceiling */
        prov_driver_fill_status(w.d, &st);
        assert_int_equal(st.next_retry_at, w.f.now_unix + 120);
        assert_string_equal(st.last_status, "error");
        assert_non_null(strstr(prov_driver_status_text(w.d), "retrying at"));
        fire_timer(&w);
        challenge(&w);
        /* a 429 on a poll: the same operation is polled again, after Retry-After */
        reply(&w, 202, "{\"operationId\":\"op-1\",\"status\":\"assigning\"}", NULL);
        assert_int_equal(w.f.timer_ms, PROV_POLL_DEFAULT_MS);
        fire_timer(&w);
        sign(&w, true);
        reply(&w, 429, NULL, "4");
        assert_string_equal(state(&w), "polling");
        assert_int_equal(w.f.timer_ms, 4000);
        fire_timer(&w);
        sign(&w, true);
        expect_request(&w, "GET", "/operations/op-1?", DPS_AUTH);
        reply(&w, 200, assigned_body(HUB, true), NULL);
        complete_job(&w, 0, false);
        complete_job(&w, 0, false); /* TPM_EVICT of the (empty) old slot */
        assert_string_equal(state(&w), "provisioned");
        world_done(&w);

        /* DPS unreachable */
        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        reply_error(&w, -ECONNREFUSED, "Connection refused");
        assert_string_equal(state(&w), "backing-off");
        prov_driver_fill_status(w.d, &st);
        assert_non_null(strstr(st.last_message, "unreachable"));
        world_done(&w);
}

static void test_permanent_error(void **unused) {
        struct world w;
        struct api_status st = {0};

        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        reply(&w, 404, "{\"errorCode\":404201,\"message\":\"Enrollment not found\"}", NULL);
        assert_string_equal(state(&w), "failed");
        assert_false(w.f.timer_armed);
        assert_false(w.f.req_busy);
        prov_driver_fill_status(w.d, &st);
        assert_string_equal(st.last_status, "failed");
        assert_true(st.last_error_code == 404201);
        assert_int_equal(st.next_retry_at, 0);
        assert_null(st.hub_name);
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 401), API_REPORT_IGNORED);
        assert_false(w.f.req_busy);
        /* only a request tries again */
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        assert_string_equal(state(&w), "registering");
        challenge(&w);
        finish(&w, HUB);
        world_done(&w);

        /* a failed final import backs off; the TPM's message is kept */
        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        challenge(&w);
        reply(&w, 200, assigned_body(HUB, true), NULL);
        complete_job(&w, -EIO, false);
        assert_string_equal(state(&w), "backing-off");
        prov_driver_fill_status(w.d, &st);
        assert_non_null(strstr(st.last_message, "TPM_RC_INTEGRITY"));
        assert_null(st.hub_name);
        world_done(&w);
}

static void test_reprovision_while_busy(void **unused) {
        struct world w;

        /* while a poll waits: coalesced, the run goes on */
        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        challenge(&w);
        reply(&w, 202, "{\"operationId\":\"op-1\",\"status\":\"assigning\"}", "1");
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        assert_string_equal(state(&w), "polling");
        assert_true(w.f.timer_armed);
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 401), API_REPORT_ALREADY_PROVISIONING);
        fire_timer(&w);
        sign(&w, true);
        /* while a request is in flight: coalesced too */
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        assert_true(w.f.req_busy);
        reply(&w, 200, assigned_body(HUB, true), NULL);
        complete_job(&w, 0, false);
        complete_job(&w, 0, false); /* TPM_EVICT of the (empty) old slot */
        assert_string_equal(state(&w), "provisioned");
        assert_int_equal(w.f.cancels, 0);

        /* while backing off: now */
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        reply(&w, 503, NULL, NULL);
        assert_string_equal(state(&w), "backing-off");
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        assert_false(w.f.timer_armed);
        assert_string_equal(state(&w), "registering");
        /* a config change mid-run: the run finishes, then another with the new settings */
        struct tpmid_config cfg2 = w.cfg;
        cfg2.provisioning.id_scope = (char *)"0ne00000002";
        prov_driver_set_config(w.d, &cfg2);
        assert_string_equal(state(&w), "registering");
        assert_true(w.f.req_busy);
        reply(&w, 401, "{\"authenticationKey\":\"" CHALLENGE_B64 "\"}", NULL);
        expect_job_at(&w, TPM_JOB_IMPORT, 0x101); /* the first run's key serves from A: B stages now */
        complete_job(&w, 0, false);
        expect_job_at(&w, TPM_JOB_SIGN, 0x101);
        complete_job(&w, 0, false);
        reply(&w, 200, assigned_body(HUB2, true), NULL);
        expect_job_at(&w, TPM_JOB_IMPORT, 0x101);
        complete_job(&w, 0, false);
        assert_int_equal(w.f.stored.key_slot, STATE_KEY_SLOT_B);
        expect_job_at(&w, TPM_JOB_EVICT, 0x100); /* the first run's key */
        complete_job(&w, 0, true);
        assert_string_equal(state(&w), "registering");
        expect_request(&w, "PUT", "/0ne00000002/registrations/" REGID "/register", NO_AUTH);
        /* a completion superseded by a new operation is dropped */
        world_done(&w);

        /* during the hub check: remembered, runs after its answer */
        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        start(&w);
        found_key(&w, false);
        assert_int_equal(prov_driver_reprovision(w.d), 0);
        assert_string_equal(state(&w), "checking-hub");
        sign(&w, false);
        reply(&w, 200, "[]", NULL);
        assert_string_equal(state(&w), "registering");
        world_done(&w);
}

static void test_reports_and_modes(void **unused) {
        struct world w;
        struct tpmid_config cfg2;

        /* OnErrorOnly: no hub check at start, reports ignored */
        world_init(&w, PROV_MODE_ON_ERROR_ONLY);
        save_identity(&w, HUB);
        start(&w);
        found_key(&w, false);
        assert_string_equal(state(&w), "provisioned");
        assert_int_equal(w.f.requests, 0);
        assert_int_equal(prov_driver_mode(w.d), PROV_MODE_ON_ERROR_ONLY);
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 401), API_REPORT_IGNORED);
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 403), API_REPORT_IGNORED);
        assert_null(w.f.job);
        assert_false(w.f.req_busy);
        assert_string_equal(state(&w), "provisioned");

        /* reload to Dynamic: the mode applies at once and starts nothing */
        cfg2 = w.cfg;
        cfg2.auto_reprovisioning_mode = PROV_MODE_DYNAMIC;
        unsigned calls = w.f.status_calls;
        prov_driver_set_config(w.d, &cfg2);
        assert_int_equal(prov_driver_mode(w.d), PROV_MODE_DYNAMIC);
        assert_true(w.f.status_calls > calls); /* status shows the mode the machine runs */
        assert_non_null(strstr(prov_driver_status_text(w.d), "(Dynamic)"));
        assert_string_equal(state(&w), "provisioned");
        assert_null(w.f.job);
        /* now a rejection report makes the daemon check the hub itself */
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 500), API_REPORT_IGNORED);
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 401), API_REPORT_CHECKING_HUB);
        assert_string_equal(state(&w), "checking-hub");
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 401), API_REPORT_CHECKING_HUB);
        sign(&w, false);
        expect_request(&w, "GET", "https://" HUB "/devices/", HUB_AUTH);
        reply(&w, 200, "[]", NULL);
        assert_string_equal(state(&w), "provisioned");
        /* rate limit on the driver's clock */
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 404), API_REPORT_RATE_LIMITED);
        assert_null(w.f.job);
        w.f.now_ms += PROV_REPORT_MIN_INTERVAL_MS;
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 404), API_REPORT_CHECKING_HUB);
        sign(&w, false);
        reply(&w, 401, NULL, NULL); /* the hub agrees: DPS */
        assert_string_equal(state(&w), "registering");

        /* back to OnErrorOnly mid-run: the run goes on, reports are ignored again */
        prov_driver_set_config(w.d, &w.cfg);
        assert_int_equal(prov_driver_mode(w.d), PROV_MODE_ON_ERROR_ONLY);
        assert_string_equal(state(&w), "registering");
        assert_true(w.f.req_busy);
        assert_int_equal(prov_driver_report_bad_credentials(w.d, 401), API_REPORT_IGNORED);
        world_done(&w);
}

static void test_close_with_job_in_flight(void **unused) {
        struct world w;
        struct tpm_job *job;

        world_init(&w, PROV_MODE_DYNAMIC);
        save_identity(&w, HUB);
        start(&w);
        job = w.f.job;
        assert_non_null(job);
        prov_driver_close(w.d); /* io closed, but the job still references the driver */
        assert_true(w.f.closed);
        job->r = 0;
        job->present = true;
        job->done(job, job->userdata); /* frees it; ASan/valgrind see a use after free otherwise */
}

static void test_tpm_queue_full(void **unused) {
        struct world w;

        world_init(&w, PROV_MODE_DYNAMIC);
        start(&w);
        w.f.tpm_submit_r = -EAGAIN;
        reply(&w, 401, "{\"authenticationKey\":\"" CHALLENGE_B64 "\"}", NULL);
        assert_string_equal(state(&w), "backing-off"); /* the import could not start */
        assert_true(w.f.timer_armed);
        world_done(&w);
}

int main(void) {
        const struct CMUnitTest tests[] = {
                cmocka_unit_test(test_whole_provisioning),
                cmocka_unit_test(test_startup_recovery),
                cmocka_unit_test(test_saved_identity),
                cmocka_unit_test(test_401_without_challenge),
                cmocka_unit_test(test_stale_challenge),
                cmocka_unit_test(test_clock_skew),
                cmocka_unit_test(test_save_retried),
                cmocka_unit_test(test_429_retry_after),
                cmocka_unit_test(test_permanent_error),
                cmocka_unit_test(test_reprovision_while_busy),
                cmocka_unit_test(test_reports_and_modes),
                cmocka_unit_test(test_close_with_job_in_flight),
                cmocka_unit_test(test_tpm_queue_full),
        };
        log_set_max_level(LOG_DEBUG);
        return cmocka_run_group_tests(tests, NULL, NULL);
}
