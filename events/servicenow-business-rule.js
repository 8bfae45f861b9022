// ServiceNow Business Rule on Incident (async, on update; condition: State
// changes to Resolved OR State changes to Closed). It calls the REST Message
// "mde-offboard" (method "post", Basic auth profile, endpoint
// https://<api>/v1/webhooks/servicenow). sys_id is what the work note is
// written to: without it the outcome is never written back.
(function executeRule(current, previous) {
  var r = new sn_ws.RESTMessageV2('mde-offboard', 'post');
  r.setRequestBody(JSON.stringify({
    number: current.getValue('number'),
    sys_id: current.getUniqueValue(),
    state: current.state.getDisplayValue(),
    short_description: current.getValue('short_description'),
    cmdb_ci: current.cmdb_ci.getDisplayValue(),
    mde_machine_id: ''
  }));
  var res = r.execute(), code = res.getStatusCode();
  if (code == 409 || code == 503) { // retry after Retry-After seconds
    var when = new GlideDateTime();
    when.addSeconds(parseInt(res.getHeader('Retry-After'), 10) || 60);
    gs.eventQueueScheduled('mde.offboard.retry', current, '', '', when);
  }
})(current, previous);
