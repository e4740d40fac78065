/*
 * xfer: moves one file over TCP or vsock, for Volt's end-to-end tests. Built
 * static by the test (gcc -static), so the same binary runs in a busybox
 * guest and on the host (inside a network namespace).
 *
 *   xfer tcp-recv PORT FILE          accept one TCP connection, save what it sends
 *   xfer tcp-send HOST PORT FILE     connect (retrying up to 60 s), send FILE, half-close
 *   xfer vsock-recv PORT FILE        accept one vsock connection, save what it sends
 *   xfer vsock-send CID PORT FILE    connect over vsock, send FILE, half-close
 *
 * Prints "xfer: N bytes" on success; exits non-zero with a message otherwise.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static void die(const char *what) {
  fprintf(stderr, "xfer: %s: %s\n", what, strerror(errno));
  exit(1);
}

static long copy(int from, int to) {
  char buffer[65536];
  long total = 0;
  for (;;) {
    ssize_t n = read(from, buffer, sizeof buffer);
    if (n == 0) return total;
    if (n < 0) {
      if (errno == EINTR) continue;
      die("read");
    }
    for (ssize_t done = 0; done < n;) {
      ssize_t w = write(to, buffer + done, n - done);
      if (w < 0) {
        if (errno == EINTR) continue;
        die("write");
      }
      done += w;
    }
    total += n;
  }
}

static void receive(int listener, const char *path) {
  if (listen(listener, 1) < 0) die("listen");
  int peer = accept(listener, NULL, NULL);
  if (peer < 0) die("accept");
  int out = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) die(path);
  long total = copy(peer, out);
  close(out);
  close(peer);
  printf("xfer: %ld bytes\n", total);
}

static void send_file(int sock, const char *path) {
  int in = open(path, O_RDONLY);
  if (in < 0) die(path);
  long total = copy(in, sock);
  if (shutdown(sock, SHUT_WR) < 0) die("shutdown");
  char drain[256];
  while (read(sock, drain, sizeof drain) > 0) {
  }
  close(sock);
  printf("xfer: %ld bytes\n", total);
}

int main(int argc, char **argv) {
  setvbuf(stdout, NULL, _IONBF, 0);
  if (argc == 4 && strcmp(argv[1], "tcp-recv") == 0) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    int one = 1;
    setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[2])), .sin_addr.s_addr = htonl(INADDR_ANY)};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    receive(s, argv[3]);
  } else if (argc == 5 && strcmp(argv[1], "tcp-send") == 0) {
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[3]))};
    if (inet_pton(AF_INET, argv[2], &a.sin_addr) != 1) die("address");
    for (int attempt = 0;; attempt++) {
      int s = socket(AF_INET, SOCK_STREAM, 0);
      if (connect(s, (struct sockaddr *)&a, sizeof a) == 0) {
        send_file(s, argv[4]);
        break;
      }
      close(s);
      if (attempt >= 120) die("connect");
      usleep(500000);
    }
  } else if (argc == 4 && strcmp(argv[1], "vsock-recv") == 0) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) die("socket(AF_VSOCK)");
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = atoi(argv[2]), .svm_cid = VMADDR_CID_ANY};
    if (bind(s, (struct sockaddr *)&a, sizeof a) < 0) die("bind");
    receive(s, argv[3]);
  } else if (argc == 5 && strcmp(argv[1], "vsock-send") == 0) {
    int s = socket(AF_VSOCK, SOCK_STREAM, 0);
    if (s < 0) die("socket(AF_VSOCK)");
    struct sockaddr_vm a = {.svm_family = AF_VSOCK, .svm_port = atoi(argv[3]), .svm_cid = atoi(argv[2])};
    if (connect(s, (struct sockaddr *)&a, sizeof a) < 0) die("connect");
    send_file(s, argv[4]);
  } else {
    fprintf(stderr, "usage: xfer tcp-recv PORT FILE | tcp-send HOST PORT FILE | vsock-recv PORT FILE | vsock-send CID PORT FILE\n");
    return 2;
  }
  return 0;
}
