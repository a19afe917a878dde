/*
 * QMP events: the generated qapi_event_send_*() functions build the data
 * and call qapi_event_emit(), which stamps and broadcasts the event.
 */
#include "monitor/monitor-internal.h"
#include "monitor/monitor.h"

void qapi_event_emit(const char *name, JsonObject *data)
{
    JsonObject *ev = json_object_new(), *ts = json_object_new();
    JsonNode *n = json_node_new(JSON_NODE_OBJECT);
    gint64 now = g_get_real_time(); /* wall clock, as QEMU stamps events */
    GBytes *line;

    json_object_set_int_member(ts, "seconds", now / G_USEC_PER_SEC);
    json_object_set_int_member(ts, "microseconds", now % G_USEC_PER_SEC);
    json_object_set_object_member(ev, "timestamp", ts);
    json_object_set_string_member(ev, "event", name);
    if (data) {
        /* The caller keeps its reference. */
        json_object_set_object_member(ev, "data", json_object_ref(data));
    }
    json_node_take_object(n, ev);
    line = qmp_encode_line(n);
    json_node_unref(n);
    monitor_broadcast_event(line);
    g_bytes_unref(line);
}
