# Nearest-neighbour query for the test guest (busybox awk).
#
# Input file: the vector table, one "ID X Y Z ..." line per vector.
# ENVIRON["RVF_BODY"]: the request body, {"vector":[f32...],"k":n}.
# -v mode=v1  -> {"results":[{"id":..,"distance":..}]}   (rvf-server)
# -v mode=bare -> [{"id":..,"distance":..}]              (upstream launcher)
# Prints "CODE JSON" on one line for the HTTP handler.
#
# Distances are squared L2, as rvf-runtime's L2 metric computes them, so a
# host-side RvfStore::query on the fixture RVF gives the same numbers.
# The JSON "parser" only understands this one flat request shape; anything
# else is rejected with 400, never guessed at.

function fail(msg) {
	printf "400 {\"error\":\"%s\",\"code\":400}\n", msg
	exit
}

{
	ids[n] = $1
	for (i = 2; i <= NF; i++)
		vec[n, i - 1] = $i
	dim = NF - 1
	n++
}

END {
	s = ENVIRON["RVF_BODY"]
	gsub(/[ \t\r\n]+/, "", s)
	if (s !~ /^\{.*\}$/)
		fail("body must be a JSON object")
	if (!match(s, /"vector":\[[^]]*\]/))
		fail("missing \\\"vector\\\" array")
	inner = substr(s, RSTART + 10, RLENGTH - 11)
	m = (inner == "") ? 0 : split(inner, q, ",")
	for (i = 1; i <= m; i++) {
		if (q[i] !~ /^-?[0-9]+(\.[0-9]+)?([eE][-+]?[0-9]+)?$/)
			fail("\\\"vector\\\" must hold only numbers")
		q[i] += 0
		if (q[i] > 3.4e38 || q[i] < -3.4e38)
			fail("\\\"vector\\\" value out of f32 range")
	}
	if (m != dim)
		fail(sprintf("vector has dimension %d, the store has %d", m, dim))

	k = 10
	if (index(s, "\"k\":")) {
		if (!match(s, /"k":[0-9]+[,}]/))
			fail("\\\"k\\\" must be a non-negative integer")
		k = substr(s, RSTART + 4, RLENGTH - 5) + 0
	}

	for (j = 0; j < n; j++) {
		d = 0
		for (i = 1; i <= dim; i++) {
			# Not `^ 2`: Debian's busybox awk has no math support.
			t = q[i] - vec[j, i]
			d += t * t
		}
		dist[j] = d
		order[j] = j
	}
	# Insertion sort by (distance, id): n is tiny.
	for (a = 1; a < n; a++) {
		x = order[a]
		b = a - 1
		while (b >= 0 && (dist[order[b]] > dist[x] || (dist[order[b]] == dist[x] && ids[order[b]] > ids[x]))) {
			order[b + 1] = order[b]
			b--
		}
		order[b + 1] = x
	}

	out = ""
	for (r = 0; r < n && r < k; r++) {
		j = order[r]
		if (r > 0)
			out = out ","
		out = out sprintf("{\"id\":%d,\"distance\":%.9g}", ids[j], dist[j])
	}
	if (mode == "bare")
		print "200 [" out "]"
	else
		print "200 {\"results\":[" out "]}"
}
