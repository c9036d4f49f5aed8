/* libiopfd-client: what a VMM needs to hand a device's page faults to iopfd, and to take them
 * back, over iopfd's Varlink control socket. See libiopfd-client(3) and docs/VMM.md.
 *
 * One iopfd_client is one connection; calls on it are blocking and must not be made from two
 * threads at once (use one client per thread). Every call returns IOPFD_OK (0) or a negative
 * iopfd_result; after a failure iopfd_client_error() says what happened in words, and for
 * IOPFD_E_DAEMON iopfd_client_error_name() gives iopfd's error ("io.iopfd.Busy"). Strings
 * returned stay valid until the next call on the same client. SIGPIPE is never raised.
 * The layouts of the structs below are part of the ABI of libiopfd-client.so.0: a field added
 * means a new soname. */
#ifndef IOPFD_CLIENT_H_
#define IOPFD_CLIENT_H_

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* The socket iopfd listens on when installed as a service. */
#define IOPFD_CLIENT_DEFAULT_SOCKET "/run/iopfd/io.iopfd"

/* What a call returns. */
enum iopfd_result {
  IOPFD_OK = 0,
  /* The control socket cannot be reached (no iopfd, permissions): the message names the errno. */
  IOPFD_E_CONNECT = -1,
  /* The connection failed or was closed mid-call (iopfd stopped): reconnect. */
  IOPFD_E_IO = -2,
  /* A reply that is not a Varlink message of the expected shape. */
  IOPFD_E_PROTOCOL = -3,
  /* iopfd answered with an error: iopfd_client_error_name() and iopfd_client_error(). */
  IOPFD_E_DAEMON = -4,
  /* An argument is invalid (NULL where a value is needed, a name too long, ...). */
  IOPFD_E_INVALID = -5,
  /* Out of memory. */
  IOPFD_E_NOMEM = -6,
  /* iopfd_client_wait_settled(): the device was still changing state at the timeout. */
  IOPFD_E_TIMEOUT = -7,
};

typedef struct iopfd_client iopfd_client;

/* A descriptor handed to iopfd with iopfd_client_adopt(), under the name the device's
 * configuration uses for it (its iommufd_fd, fault_fd, vfio_fd or fd: backing names). */
struct iopfd_fd {
  const char* name;
  int fd;
};

/* A device's drain state and epoch: "running", "halting", "flushing", "resetting",
 * "resuming", "halted", "quarantined", "detached" or "failed" (docs/DRAIN.md). */
struct iopfd_device_state {
  char state[32];
  uint64_t epoch;
};

/* GetStatus, in part. */
struct iopfd_status {
  char version[32];
  char health[16]; /* "ok" or "degraded" */
  uint64_t uptime_usec;
  uint32_t devices_configured, devices_running, devices_adopted, devices_quarantined;
};

/* One device as ListDevices describes it. */
struct iopfd_device_info {
  char name[128];
  char attach[16]; /* "adopt" or "vfio" */
  char origin[16]; /* "config" or "adopted" */
  struct iopfd_device_state state;
  uint64_t records, groups, success, invalid, outstanding;
};

/* Connects to iopfd's control socket (NULL: IOPFD_CLIENT_DEFAULT_SOCKET) and stores the client
 * in *out. Returns IOPFD_OK, IOPFD_E_CONNECT (the socket is missing: iopfd is not running;
 * EACCES: the caller is not root nor in iopfd.toml's [control] groups), IOPFD_E_INVALID (a path
 * too long for a Unix socket) or IOPFD_E_NOMEM. On failure *out is NULL; the message of the
 * failure is returned by iopfd_client_connect_error() until the next connect of this thread. */
int iopfd_client_connect(const char* socket_path, iopfd_client** out);

/* Returns the message of the calling thread's last failed iopfd_client_connect(), or "". */
const char* iopfd_client_connect_error(void);

/* Closes the connection and frees the client. NULL is allowed. */
void iopfd_client_close(iopfd_client* client);

/* Returns the message of the client's last failed call, or "" after a success. */
const char* iopfd_client_error(const iopfd_client* client);

/* Returns iopfd's error name of the last call when it returned IOPFD_E_DAEMON
 * ("io.iopfd.NoSuchDevice", "io.iopfd.Busy", "org.varlink.service.InvalidParameter", ...),
 * else "". */
const char* iopfd_client_error_name(const iopfd_client* client);

/* Returns the connection's socket, e.g. to poll it; the client still owns it. */
int iopfd_client_fd(const iopfd_client* client);

/* Hands a device over (Adopt): `config` is the text of a device file (attach = "adopt"), and
 * fds[0..nfds) the descriptors it names, sent with the call (SCM_RIGHTS; iopfd gets its own
 * copies: the caller keeps and may close its own). On success the served device's name is
 * copied into name_out (when not NULL, truncated to name_len - 1 bytes). From then on iopfd
 * answers the device's page requests; the caller must not read the fault queue nor change the
 * IOAS mappings of the regions iopfd manages. Errors (IOPFD_E_DAEMON): io.iopfd.InvalidConfig
 * (the text, or an fd name the config does not use), io.iopfd.Busy (the name is served),
 * io.iopfd.AttachFailed, org.varlink.service.InvalidParameter (fds do not match the names). */
int iopfd_client_adopt(iopfd_client* client, const char* config, const struct iopfd_fd* fds,
                       size_t nfds, char* name_out, size_t name_len);

/* Stops serving a device (Detach) after answering every page request read from it; page
 * requests arriving afterwards are the caller's. `groups_answered`, when not NULL, receives the
 * groups iopfd answered for the device in all, and `outstanding` (when not NULL) the groups
 * left unanswered (0 unless its fault queue failed). Errors: io.iopfd.NoSuchDevice. */
int iopfd_client_detach(iopfd_client* client, const char* device, uint64_t* groups_answered,
                        uint64_t* outstanding);

/* The drain state machine (docs/DRAIN.md). Each stores the device's state and epoch after the
 * call in *state (when not NULL).
 * drain: halt the device's page requests (pasid != 0: of that PASID only), flush every
 *   outstanding tag, resume with a new epoch. With halt = "owner" it returns in "halting": the
 *   caller stops the device's DMA, then calls iopfd_client_halt().
 * halt: in "halting", confirms the DMA stop; in "running", holds page requests halted
 *   ("halted") until iopfd_client_resume().
 * resume: from "halted" or "quarantined", with a new epoch.
 * reset: halt, flush, function level reset, flush again, resume; returns in "resetting" while
 *   the reset runs: iopfd_client_wait_settled() waits for its end.
 * Errors: io.iopfd.NoSuchDevice, NoSuchPasid, NotSupported (adopt mode without the VFIO device
 * fd or a switch module: the caller holds the attachments), InvalidState (names the state),
 * DrainFailed (a step failed; the device is now quarantined). */
int iopfd_client_drain(iopfd_client* client, const char* device, uint32_t pasid,
                       struct iopfd_device_state* state);
int iopfd_client_halt(iopfd_client* client, const char* device, struct iopfd_device_state* state);
int iopfd_client_resume(iopfd_client* client, const char* device, struct iopfd_device_state* state);
int iopfd_client_reset(iopfd_client* client, const char* device, struct iopfd_device_state* state);

/* Waits until the device leaves the states a drain passes through on its own ("flushing",
 * "resetting", "resuming"), polling every 20 ms for at most timeout_ms, and stores where it
 * settled. Returns IOPFD_OK, IOPFD_E_TIMEOUT, or the errors of iopfd_client_get_device(). */
int iopfd_client_wait_settled(iopfd_client* client, const char* device, int timeout_ms,
                              struct iopfd_device_state* state);

/* Reads the daemon's status (GetStatus). */
int iopfd_client_get_status(iopfd_client* client, struct iopfd_status* status);

/* Reads one device's entry of ListDevices. Errors: io.iopfd.NoSuchDevice when it is not
 * served. */
int iopfd_client_get_device(iopfd_client* client, const char* device,
                            struct iopfd_device_info* info);

/* Any io.iopfd method, for what the calls above do not cover: `method` fully qualified
 * ("io.iopfd.GetStats"), `parameters_json` a JSON object or NULL. On success *reply_json (when
 * not NULL) receives the reply's parameters as JSON, to be freed with iopfd_client_free(). */
int iopfd_client_call(iopfd_client* client, const char* method, const char* parameters_json,
                      char** reply_json);

/* Frees what iopfd_client_call() returned. NULL is allowed. */
void iopfd_client_free(char* p);

/* Returns the name of a result ("IOPFD_E_DAEMON"), or "unknown". */
const char* iopfd_client_result_name(int result);

#ifdef __cplusplus
}
#endif

#endif /* IOPFD_CLIENT_H_ */
