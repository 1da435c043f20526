package bench

ints := x if {
	x := ((input.a + input.b) * 3 - input.c) % 7
}

floats := x if {
	x := (input.score * 0.75 + input.bonus) / 2.5
}

mixed := x if {
	x := input.a * 0.5 + input.score
}

ratio_ok if {
	input.used / input.quota <= 0.8
}
