// Rolldown options merged into jco's `--bundle` step (build.sh): the broker's host
// interface is an import of the component, not a module to bundle.
export default {
  external: [/^mqtt-broker:plugin\//],
};
