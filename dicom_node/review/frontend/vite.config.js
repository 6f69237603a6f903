// Builds the review page into dicom_node/review/static/app, served by the node under
// /review/static/app (dicom_node/review/pages.py). Nothing is fetched at run time.
// "events" (a dependency) is the browser EventEmitter that vtk.js's xmlbuilder2 extends:
// without it Vite stubs the Node module and the bundle fails at load.
import { fileURLToPath } from 'node:url';
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/review/static/app/',
  build: {
    outDir: fileURLToPath(new URL('../static/app', import.meta.url)),
    emptyOutDir: true,
    target: 'es2022',
    chunkSizeWarningLimit: 4096,
  },
  worker: { format: 'es' },
});
