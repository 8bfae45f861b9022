// ServiceNow Business Rule on Incident: When async, Update, condition
// "State changes to Resolved" OR "State changes to Closed". It calls the
// REST Message "mde-offboard" (method "post", Basic auth profile, endpoint
// https://<api>/v1/webhooks/servicenow). sys_id is where the work note is
// written: without it the outcome is never written back.
(function executeRule(current, previous) {
  var r = new sn_ws.RESTMessageV2('mde-offboard', 'post');
  r.setRequestBody(JSON.stringify({
    number: current.getValue('number'),
    sys_id: current.getUniqueValue(),
    state: current.state.getDisplayValue(),
    short_description: current.getValue('short_description'),
    cmdb_ci: current.cmdb_ci.fqdn.toString() || current.cmdb_ci.getDisplayValue(),
    mde_machine_id: ''
  }));
  var res = r.execute(), code = res.getStatusCode();
  var attempt = parseInt(current.getValue('u_mde_attempts') || '0', 10);
  if ((code == 409 || code == 503) && attempt < 10) { // retry after Retry-After, 10 times at most
    var when = new GlideDateTime();
    when.addSeconds(parseInt(res.getHeader('Retry-After'), 10) || 60);
    gs.eventQueueScheduled('mde.offboard.retry', current, String(attempt + 1), '', when);
  }
})(current, previous);
