#ifndef METATRAIN_CZEROMQ_SHIM_H
#define METATRAIN_CZEROMQ_SHIM_H
#include <zmq.h>

/* Constants that are macros Swift may not import reliably. */
static inline int mt_zmq_errno(void) { return zmq_errno(); }
static inline int mt_zmq_eagain(void) { return EAGAIN; }
static inline int mt_zmq_eintr(void) { return EINTR; }
#endif
