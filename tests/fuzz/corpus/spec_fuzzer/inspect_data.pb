"
 
m1builtin:fashion-mnist/test