// Parses each LogQL query given as an argument with Grafana's LogQL grammar (@grafana/lezer-logql)
// and prints one JSON line per query: its top node and the offsets of any syntax errors.
const { parser } = require("@grafana/lezer-logql");

for (const query of process.argv.slice(2)) {
  const tree = parser.parse(query);
  const errors = [];
  const nodes = [];
  tree.iterate({
    enter(node) {
      if (node.type.isError) errors.push(node.from);
      else nodes.push(node.name);
    },
  });
  console.log(JSON.stringify({ query, errors, nodes }));
}
