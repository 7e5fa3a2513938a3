// Parses PromQL expressions with Prometheus' own grammar
// (@prometheus-io/lezer-promql, the parser of Prometheus' web UI).
// stdin: a JSON list of expressions; stdout: a JSON list, one
// {errors: [offsets], metrics: [names], functions: [names]} per expression.
// Run by deploy/check_monitoring.py.
import { parser } from '@prometheus-io/lezer-promql';
import { readFileSync } from 'node:fs';

const exprs = JSON.parse(readFileSync(0, 'utf8'));
const out = exprs.map((expr) => {
  const result = { errors: [], metrics: [], functions: [] };
  parser.parse(expr).iterate({
    enter: (node) => {
      if (node.type.isError) result.errors.push(node.from);
      else if (node.name === 'Identifier') result.metrics.push(expr.slice(node.from, node.to));
      else if (node.name === 'FunctionIdentifier') result.functions.push(expr.slice(node.from, node.to));
    },
  });
  return result;
});
process.stdout.write(JSON.stringify(out));
