/* vmm-handover: how a VMM hands a device's page faults to iopfd with libiopfd-client, and takes
 * them back. It sets nothing up itself: the VMM's part (opening /dev/iommu, binding the VFIO
 * device, allocating the IOAS, the fault queue and the IOPF-capable HWPT, attaching) is done by
 * its parent, which passes the descriptors as inherited fds. See docs/VMM.md.
 *
 *   vmm-handover [--socket PATH] --config DEVICE.toml --fd NAME=FD... [--expect-groups N]
 *                [--drain] [--reset]
 *
 * The sequence: connect; read iopfd's status; Adopt the device with its descriptors; wait until
 * iopfd has answered N page-request groups (the guest running); optionally drain or reset it in
 * step with the VMM (a guest-initiated FLR, say); Detach, which answers what iopfd read and
 * hands the fault queue back. Exit status 0, or 1 naming the call that failed. */
#define _POSIX_C_SOURCE 200809L /* nanosleep */

#include <iopfd-client.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define MAX_FDS 16

static int failed(iopfd_client* c, const char* what, int rc) {
  fprintf(stderr, "vmm-handover: %s: %s %s: %s\n", what, iopfd_client_result_name(rc),
          iopfd_client_error_name(c), iopfd_client_error(c));
  return 1;
}

static char* read_file(const char* path) {
  FILE* f = fopen(path, "r");
  if (f == NULL) return NULL;
  static char text[65536];
  size_t n = fread(text, 1, sizeof(text) - 1, f);
  fclose(f);
  text[n] = '\0';
  return text;
}

int main(int argc, char** argv) {
  const char *socket_path = NULL, *config_path = NULL;
  struct iopfd_fd fds[MAX_FDS];
  size_t nfds = 0;
  unsigned long long expect = 0;
  int drain = 0, reset = 0;
  setvbuf(stdout, NULL, _IOLBF, 0); /* progress and errors in the order they happen */
  for (int i = 1; i < argc; ++i) {
    if (strcmp(argv[i], "--socket") == 0 && i + 1 < argc) {
      socket_path = argv[++i];
    } else if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
      config_path = argv[++i];
    } else if (strcmp(argv[i], "--fd") == 0 && i + 1 < argc && nfds < MAX_FDS) {
      char *spec = argv[++i], *eq = strchr(spec, '=');
      if (eq == NULL) {
        fprintf(stderr, "vmm-handover: --fd %s: not NAME=FD\n", spec);
        return 2;
      }
      *eq = '\0';
      fds[nfds].name = spec;
      fds[nfds].fd = atoi(eq + 1);
      ++nfds;
    } else if (strcmp(argv[i], "--expect-groups") == 0 && i + 1 < argc) {
      expect = strtoull(argv[++i], NULL, 10);
    } else if (strcmp(argv[i], "--drain") == 0) {
      drain = 1;
    } else if (strcmp(argv[i], "--reset") == 0) {
      reset = 1;
    } else {
      fprintf(stderr,
              "usage: vmm-handover [--socket PATH] --config DEVICE.toml --fd NAME=FD...\n"
              "                    [--expect-groups N] [--drain] [--reset]\n");
      return 2;
    }
  }
  const char* config = config_path != NULL ? read_file(config_path) : NULL;
  if (config == NULL) {
    fprintf(stderr, "vmm-handover: --config: cannot read the device file\n");
    return 2;
  }

  /* 1. Connect to the control socket (root, or a member of iopfd.toml's [control] admin_group:
   *    Adopt changes state). */
  iopfd_client* c = NULL;
  int rc = iopfd_client_connect(socket_path, &c);
  if (rc != IOPFD_OK) {
    fprintf(stderr, "vmm-handover: connect: %s\n", iopfd_client_connect_error());
    return 1;
  }
  struct iopfd_status status;
  if ((rc = iopfd_client_get_status(c, &status)) != IOPFD_OK) return failed(c, "status", rc);
  printf("iopfd %s, health %s, %u device(s) running\n", status.version, status.health,
         status.devices_running);

  /* 2. Hand the device over. From here on iopfd answers its page requests: the VMM must not
   *    read the fault queue, nor map or unmap in the regions iopfd manages. */
  char name[128];
  if ((rc = iopfd_client_adopt(c, config, fds, nfds, name, sizeof(name))) != IOPFD_OK) {
    return failed(c, "adopt", rc);
  }
  printf("adopted %s\n", name);

  /* 3. The guest runs; the VMM may watch the device. */
  struct iopfd_device_info info;
  for (int waited = 0;; waited += 10) {
    if ((rc = iopfd_client_get_device(c, name, &info)) != IOPFD_OK) return failed(c, "device", rc);
    if (info.groups >= expect || waited >= 10000) break;
    struct timespec ts = {0, 10 * 1000 * 1000};
    nanosleep(&ts, NULL);
  }
  printf("%s: %s, epoch %llu, %llu groups read, %llu answered SUCCESS, %llu INVALID\n", name,
         info.state.state, (unsigned long long)info.state.epoch, (unsigned long long)info.groups,
         (unsigned long long)info.success, (unsigned long long)info.invalid);

  /* 4. A reset of the device (the guest wrote FLR): iopfd halts its page requests, flushes every
   *    outstanding tag, resets, flushes again and resumes with a new epoch. With halt = "owner"
   *    the drain waits in "halting" until the VMM has stopped the device's DMA and says so. */
  struct iopfd_device_state st;
  if (drain || reset) {
    rc = reset ? iopfd_client_reset(c, name, &st) : iopfd_client_drain(c, name, 0, &st);
    if (rc == IOPFD_OK && strcmp(st.state, "halting") == 0) {
      /* ... the VMM stops the device's DMA here ... */
      rc = iopfd_client_halt(c, name, &st);
    }
    if (rc == IOPFD_OK) rc = iopfd_client_wait_settled(c, name, 60000, &st);
    if (rc != IOPFD_OK) {
      /* NotSupported: adopted without the VFIO device fd or a switch module, iopfd cannot park
       * the attachments; the VMM drains itself (docs/VMM.md). */
      failed(c, reset ? "reset" : "drain", rc);
    } else {
      printf("%s: %s, epoch %llu after the %s\n", name, st.state, (unsigned long long)st.epoch,
             reset ? "reset" : "drain");
    }
  }

  /* 5. Take the device back: iopfd answers what it read, closes its copies of the descriptors
   *    and stops reading the fault queue. */
  uint64_t answered = 0, outstanding = 0;
  if ((rc = iopfd_client_detach(c, name, &answered, &outstanding)) != IOPFD_OK) {
    return failed(c, "detach", rc);
  }
  printf("detached %s: %llu groups answered, %llu left unanswered\n", name,
         (unsigned long long)answered, (unsigned long long)outstanding);
  iopfd_client_close(c);
  return 0;
}
