/* Running the programs tpmidctl drives (systemctl, journalctl; the support
 * bundle's collectors wait through ctl_wait_exit()): one fork/exec/wait, so
 * every verb reports "could not run" (127) and a signal (128) the same way. */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#include "ctl.h"
#include "util.h"

#define CTL_ASSUME_SYSTEMD_ENV "TPMIDCTL_ASSUME_SYSTEMD" /* "1": act as if systemd were PID 1 (tests, chroots) */

bool ctl_systemd_running(void) {
        const char *e = getenv(CTL_ASSUME_SYSTEMD_ENV);
        if (e && streq(e, "1"))
                return true;
        return access("/run/systemd/system", F_OK) == 0;
}

int ctl_wait_exit(pid_t pid) {
        int st;
        while (waitpid(pid, &st, 0) < 0)
                if (errno != EINTR)
                        return -errno;
        return WIFEXITED(st) ? WEXITSTATUS(st) : 128;
}

int ctl_run(char *const argv[], bool show_output) {
        pid_t pid = fork();
        if (pid < 0)
                return -errno;
        if (pid == 0) {
                if (!show_output) {
                        int fd = open("/dev/null", O_RDWR | O_CLOEXEC);
                        if (fd >= 0) {
                                (void)dup2(fd, STDOUT_FILENO);
                                (void)dup2(fd, STDERR_FILENO);
                        }
                }
                execvp(argv[0], argv);
                _exit(127);
        }
        return ctl_wait_exit(pid);
}

int ctl_run_capture(char *const argv[], char *out, size_t outlen) {
        if (outlen == 0)
                return -EINVAL;
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0)
                return -errno;
        pid_t pid = fork();
        if (pid < 0) {
                int r = -errno;
                close(p[0]);
                close(p[1]);
                return r;
        }
        if (pid == 0) {
                int null = open("/dev/null", O_RDWR | O_CLOEXEC);
                (void)dup2(p[1], STDOUT_FILENO);
                if (null >= 0)
                        (void)dup2(null, STDERR_FILENO);
                execvp(argv[0], argv);
                _exit(127);
        }
        close(p[1]);
        size_t n = 0;
        for (;;) {
                char buf[512];
                ssize_t k = read(p[0], buf, sizeof buf);
                if (k < 0 && errno == EINTR)
                        continue;
                if (k <= 0)
                        break;
                /* past outlen the rest is read and dropped, so the program never blocks on a full pipe */
                size_t take = (size_t)k < outlen - 1 - n ? (size_t)k : outlen - 1 - n;
                memcpy(out + n, buf, take);
                n += take;
        }
        close(p[0]);
        out[n] = '\0';
        while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' '))
                out[--n] = '\0';
        return ctl_wait_exit(pid);
}
