// The node's review API (same origin, session cookie). Every POST carries the session's
// CSRF token from /review/api/me.

const ROOT = '/review';

class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.status = status;
  }
}

async function request(path, options = {}) {
  const response = await fetch(`${ROOT}${path}`, { credentials: 'same-origin', ...options });
  if (response.status === 401) {
    window.location.assign(`${ROOT}/login`);
    throw new ApiError(401, 'login required');
  }
  const body = response.headers.get('content-type')?.includes('json') ? await response.json() : null;
  if (!response.ok) {
    throw new ApiError(response.status, body?.error || `${response.status} ${response.statusText}`);
  }
  return body;
}

let me = null;

/** {name, role, csrf} of the logged-in reviewer (asked once per page). */
export async function currentUser() {
  me ??= await request('/api/me');
  return me;
}

export function worklist({ state = '', q = '', limit = 50, offset = 0 } = {}) {
  const params = new URLSearchParams({ limit, offset });
  if (state) params.set('state', state);
  if (q) params.set('q', q);
  return request(`/api/worklist?${params}`);
}

export function study(key) {
  return request(`/api/studies/${encodeURIComponent(key)}`);
}

export async function sign(key, payload) {
  const { csrf } = await currentUser();
  return request(`/api/studies/${encodeURIComponent(key)}/sign`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', 'x-csrf-token': csrf },
    body: JSON.stringify(payload),
  });
}

export function studyPath(key) {
  return `${ROOT}/studies/${encodeURIComponent(key)}`;
}
