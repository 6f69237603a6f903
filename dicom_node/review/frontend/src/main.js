// The review page's shell: one index.html for /review/ (the worklist) and
// /review/studies/{key} (the study view).
import './style.css';
import { currentUser } from './api.js';
import { showWorklist } from './worklist.js';
import { showStudy } from './study.js';
import { h } from './dom.js';

async function start() {
  const app = document.getElementById('app');
  try {
    const user = await currentUser();
    document.getElementById('who').textContent = `${user.name} (${user.role})`;
    document.getElementById('logout-csrf').value = user.csrf;
    const match = window.location.pathname.match(/^\/review\/studies\/([A-Za-z0-9]+)\/?$/);
    if (match) await showStudy(app, match[1]);
    else await showWorklist(app);
  } catch (error) {
    app.replaceChildren(h('p.error', { role: 'alert' }, error.message));
  }
}

start();
