# ecflow's Julia worker: trains the student of one ecflow job file with MLPGradientFlow.jl and
# writes an ecflow result file (layouts: docs/formats-jobs.md).
#
#     julia --project=julia julia/worker.jl job.h5 result.h5
#
# or, after `include`-ing this file (ecflow/engines/julia.py does so through juliacall):
#
#     ECFlowWorker.run_job("job.h5", "result.h5")
#
# Schedule (paper appendix A.6.1, MLPGradientFlow.jl's `train`): the gradient flow
# dθ/dt = -∇L(θ) integrated with KenCarp58 on the exact Hessian, then a second-order optimizer
# (Optim.jl's NewtonTrustRegion, or BFGS), stopping at MSE ≤ loss_tol or gradient norm ≤ grad_tol.
#
# MLPGradientFlow.jl API used (src/MLPGradientFlow.jl, v0.3.0):
#   Net(; layers = ((k, f, has_bias), ...), input = Din × N, target = Dout × N, derivs, verbosity)
#   params((W₁, b₁), (W₂, b₂), ...)  -> ComponentArray with w1 = hcat(W₁, b₁) (k × (n_in + 1)),
#                                       i.e. the bias is the LAST COLUMN of each layer's matrix
#   train(net, p; alg, optim_solver, maxiterations_ode, maxtime_ode, maxiterations_optim,
#         maxtime_optim, minloss, min_gnorm, patience, verbosity, show_progress,
#         save_everystep, result = :raw)
#   loss(net, x)     = Σ_{k,s} (net(x) - target)² / N     (summed over outputs, NOT averaged)
#   gradient(net, x) = ∇ of that loss
#   MLPGradientFlow.deriv / second_deriv: the fused derivatives f′(x, y), f″(x, y, y′) of an
#   activation, which this file extends for the activations MLPGradientFlow.jl lacks.

import Pkg

const ECFLOW_JULIA_SOURCE = @__DIR__
const MLPGRADIENTFLOW_URL = "https://github.com/jbrea/MLPGradientFlow.jl.git"
const MLPGRADIENTFLOW_REV = "v0.3.0"

"""
    ecflow_instantiate()

Make the packages of `julia/Project.toml` loadable, once per process.

The environment is a private copy in the first Julia depot (`environments/ecflow-worker`), so
that resolving never writes a Manifest into the ecflow source tree (which may be read-only).
Julia ≥ 1.11 installs MLPGradientFlow.jl from the `[sources]` entry; Julia 1.10 ignores
`[sources]`, so the same URL and revision are added explicitly. Under juliacall, juliacall's
own environment is re-activated and the copy is stacked on `LOAD_PATH` right after it; run as
`julia --project=julia worker.jl`, the copy simply stays the active project.
"""
function ecflow_instantiate()
    env = joinpath(first(DEPOT_PATH), "environments", "ecflow-worker")
    mkpath(env)
    source = read(joinpath(ECFLOW_JULIA_SOURCE, "Project.toml"), String)
    stamp = joinpath(env, "ecflow-source-Project.toml")
    fresh = !isfile(stamp) || read(stamp, String) != source
    if fresh
        write(joinpath(env, "Project.toml"), source)
        rm(joinpath(env, "Manifest.toml"); force = true)
    end
    previous = Base.active_project()
    # `julia --project=julia worker.jl`: the source folder has no Manifest, so the copy stays
    # active; under juliacall, juliacall's environment is restored and the copy stacked after it
    stay = previous !== nothing && realpath(dirname(previous)) == realpath(ECFLOW_JULIA_SOURCE)
    Pkg.activate(env; io = devnull)
    try
        manifest = joinpath(env, "Manifest.toml")
        if VERSION < v"1.11" &&
           !(isfile(manifest) && occursin("MLPGradientFlow", read(manifest, String)))
            Pkg.add(Pkg.PackageSpec(url = MLPGRADIENTFLOW_URL, rev = MLPGRADIENTFLOW_REV))
        end
        Pkg.instantiate()
        fresh && write(stamp, source)
    finally
        if !stay && previous === nothing
            Pkg.activate(; io = devnull)
        elseif !stay
            Pkg.activate(dirname(previous); io = devnull)
        end
    end
    if !stay && !(env in LOAD_PATH)
        # right after the active project ("@"), before the user's default environment, so that
        # a different MLPGradientFlow.jl there cannot shadow the pinned one
        at = findfirst(==("@"), LOAD_PATH)
        insert!(LOAD_PATH, at === nothing ? 1 : at + 1, env)
    end
    nothing
end

ecflow_instantiate()

module ECFlowWorker

using HDF5: HDF5, attrs, create_group, h5open, write_dataset
using IfElse: IfElse
using LinearAlgebra: norm
using MLPGradientFlow: MLPGradientFlow, Net, params, train, gelu, g, relu, sigmoid, silu, softplus
using Optim: BFGS, LBFGS, NewtonTrustRegion
using OrdinaryDiffEq: KenCarp58, RK4

const FORMAT_VERSION = 1

# --- activations ------------------------------------------------------------------------------
# Names as in ecflow's network files (docs/formats.md). MLPGradientFlow.jl's own functions are
# used where they compute the same function as ecflow's; its `selu` rounds the constants to 9
# digits (a ~1e-8 relative difference, far above the 1e-12 RMSE the students must reach), so
# selu, leaky_relu and mish are defined here with their fused derivatives, in the same style
# (IfElse.ifelse, so that LoopVectorization's @tturbo kernels can vectorise them).

const SELU_LAMBDA = 1.0507009873554804934193349852946
const SELU_ALPHA = 1.6732632423543772848170429916717
const LEAKY_SLOPE = 0.01

ecflow_selu(x) = SELU_LAMBDA * IfElse.ifelse(x > 0, x, SELU_ALPHA * (exp(x) - 1))
# for x ≤ 0: selu′ = λα eˣ = y + λα and selu″ = λα eˣ = selu′ (reuse the forward values)
ecflow_selu′(x, y) = IfElse.ifelse(x > 0, SELU_LAMBDA * one(x), y + SELU_LAMBDA * SELU_ALPHA)
ecflow_selu′(x) = ecflow_selu′(x, ecflow_selu(x))
ecflow_selu′′(x, y, y′) = IfElse.ifelse(x > 0, zero(x), y′)
ecflow_selu′′(x) = ecflow_selu′′(x, ecflow_selu(x), ecflow_selu′(x))
MLPGradientFlow.deriv(::typeof(ecflow_selu)) = ecflow_selu′
MLPGradientFlow.second_deriv(::typeof(ecflow_selu)) = ecflow_selu′′

ecflow_leaky_relu(x) = IfElse.ifelse(x > 0, x, LEAKY_SLOPE * x)
ecflow_leaky_relu′(x, y) = IfElse.ifelse(x > 0, one(x), LEAKY_SLOPE * one(x))
ecflow_leaky_relu′(x) = ecflow_leaky_relu′(x, nothing)
ecflow_leaky_relu′′(x, y, y′) = zero(x)
ecflow_leaky_relu′′(x) = zero(x)
MLPGradientFlow.deriv(::typeof(ecflow_leaky_relu)) = ecflow_leaky_relu′
MLPGradientFlow.second_deriv(::typeof(ecflow_leaky_relu)) = ecflow_leaky_relu′′

# mish(x) = x tanh(softplus(x)); with t = tanh(softplus(x)), s = sigmoid(x):
# mish′ = t + x (1 - t²) s,  mish″ = (1 - t²) s (2 + x (1 - s - 2 t s))
ecflow_mish(x) = x * tanh(softplus(x))
function ecflow_mish′(x, y)
    t = tanh(softplus(x))
    t + x * (1 - t * t) * sigmoid(x)
end
ecflow_mish′(x) = ecflow_mish′(x, nothing)
function ecflow_mish′′(x, y, y′)
    s = sigmoid(x)
    t = tanh(softplus(x))
    (1 - t * t) * s * (2 + x * (1 - s - 2 * t * s))
end
ecflow_mish′′(x) = ecflow_mish′′(x, nothing, nothing)
MLPGradientFlow.deriv(::typeof(ecflow_mish)) = ecflow_mish′
MLPGradientFlow.second_deriv(::typeof(ecflow_mish)) = ecflow_mish′′

const ACTIVATIONS = Dict{String,Any}(
    "g" => g,                  # MLPGradientFlow.g(x) = sigmoid(4x) + softplus(x)
    "sigmoid" => sigmoid,
    "tanh" => tanh,            # Base.tanh; MLPGradientFlow.jl defines its derivatives
    "softplus" => softplus,
    "relu" => relu,
    "leaky_relu" => ecflow_leaky_relu,
    "gelu" => gelu,            # SLEEFPirates.gelu: the exact x Φ(x) (erf form), as ecflow's
    "silu" => silu,
    "selu" => ecflow_selu,
    "mish" => ecflow_mish,
    "identity" => identity,
)

function activation(name::AbstractString)
    haskey(ACTIVATIONS, name) && return ACTIVATIONS[name]
    throw(ArgumentError("unknown activation \"$name\"; expected one of: " *
                        join(sort(collect(keys(ACTIVATIONS))), ", ")))
end

# --- job file ---------------------------------------------------------------------------------

"""One layer in ecflow's convention: `W` is (n_out, n_in), `b` is (n_out,)."""
struct Layer
    W::Matrix{Float64}
    b::Vector{Float64}
    activation::String
end

struct Settings
    schedule::String
    optimizer::String
    ode_method::String
    loss_tol::Float64
    grad_tol::Float64
    flow_seconds::Float64
    polish_seconds::Float64
    max_seconds::Union{Nothing,Float64}
    max_steps::Int
    patience::Int
    memory_budget_mb::Float64
    # recovery-grade stop (ecflow's target_loss); stall_factor, creep_factor and normal_above
    # tune the native engine's stall rule and LM steps, which MLPGradientFlow.jl has no
    # counterpart of
    target_loss::Union{Nothing,Float64}
    stall_factor::Float64
    creep_factor::Float64
    normal_above::Float64
end

goal(s::Settings) = something(s.target_loss, s.loss_tol)

total_seconds(s::Settings) = something(s.max_seconds, s.flow_seconds + s.polish_seconds)

function setting(a::Dict{String,Any}, key, T; default = missing)
    if !haskey(a, key)
        default === missing && throw(ArgumentError("job file: missing setting \"$key\""))
        return default
    end
    v = a[key]
    if T <: Real && v isa Real && !(v isa Bool)
        T <: Integer && !isinteger(v) && throw(ArgumentError("job file: setting \"$key\" must be an integer, got $v"))
        return T(v)
    elseif T <: AbstractString && v isa AbstractString
        return String(v)
    end
    throw(ArgumentError("job file: setting \"$key\" must be a $T, got $(repr(v))"))
end

function read_layers(group)
    names = collect(keys(group))
    all(n -> all(isdigit, n), names) || throw(ArgumentError("job file: /init/layers must hold groups 0, 1, ..."))
    idx = sort(parse.(Int, names))
    idx == collect(0:length(idx)-1) || throw(ArgumentError("job file: gap in the numbering of /init/layers"))
    map(idx) do i
        lg = group[string(i)]
        # h5py writes the (n_out, n_in) weight row-major; HDF5.jl reads the same bytes
        # column-major, so Julia sees its transpose (n_in, n_out): transpose it back.
        W = permutedims(Matrix{Float64}(read(lg["weight"])))
        b = Vector{Float64}(read(lg["bias"]))
        name = attrs(lg)["activation"]
        activation(name)  # reject unknown names here, with the list of known ones
        size(W, 1) == length(b) || throw(ArgumentError("job file: layer $i has $(size(W, 1)) rows but $(length(b)) biases"))
        Layer(W, b, String(name))
    end
end

"""
    read_job(path) -> (x, y, layers, settings)

`x` is (d_in, n_samples) and `y` (d_out, n_samples): h5py writes /queries/x as a row-major
(n_samples, d_in) array, which HDF5.jl reads column-major as its transpose (d_in, n_samples) —
exactly the `Din × N` input that `MLPGradientFlow.Net` expects, so no copy is needed.
"""
function read_job(path::AbstractString)
    isfile(path) || throw(ArgumentError("$path: job file not found"))
    h5open(path, "r") do f
        a = Dict{String,Any}(k => attrs(f)[k] for k in keys(attrs(f)))
        get(a, "ecflow_format", nothing) == "job" ||
            throw(ArgumentError("$path: not an ecflow job file (ecflow_format = $(repr(get(a, "ecflow_format", nothing))))"))
        get(a, "version", nothing) == FORMAT_VERSION ||
            throw(ArgumentError("$path: unsupported job file version $(repr(get(a, "version", nothing)))"))
        x = Matrix{Float64}(read(f["queries/x"]))
        y = Matrix{Float64}(read(f["queries/y"]))
        layers = read_layers(f["init/layers"])
        size(x, 2) == size(y, 2) || throw(ArgumentError("$path: x and y have different sample counts"))
        size(x, 1) == size(first(layers).W, 2) || throw(ArgumentError("$path: x has $(size(x, 1)) inputs, the network $(size(first(layers).W, 2))"))
        size(y, 1) == size(last(layers).W, 1) || throw(ArgumentError("$path: y has $(size(y, 1)) outputs, the network $(size(last(layers).W, 1))"))
        all(isfinite, x) && all(isfinite, y) || throw(ArgumentError("$path: the pairs contain NaN or Inf"))
        max_seconds = haskey(a, "max_seconds") ? setting(a, "max_seconds", Float64) : nothing
        s = Settings(setting(a, "schedule", String; default = "lm-first"),
                     setting(a, "optimizer", String; default = "lm"),
                     setting(a, "ode_method", String; default = "BDF"),
                     setting(a, "loss_tol", Float64; default = 1e-31),
                     setting(a, "grad_tol", Float64; default = 1e-16),
                     setting(a, "flow_seconds", Float64; default = 180.0),
                     setting(a, "polish_seconds", Float64; default = 120.0),
                     max_seconds,
                     setting(a, "max_steps", Int; default = 100_000),
                     setting(a, "patience", Int; default = 50),
                     setting(a, "memory_budget_mb", Float64; default = 2048.0),
                     haskey(a, "target_loss") ? setting(a, "target_loss", Float64) : nothing,
                     setting(a, "stall_factor", Float64; default = 3.0),
                     setting(a, "creep_factor", Float64; default = 1.0),
                     setting(a, "normal_above", Float64; default = 1e-15))
        s.schedule in ("lm-first", "flow-first") || throw(ArgumentError("job file: unknown schedule \"$(s.schedule)\""))
        s.optimizer in ("lm", "trust-exact", "bfgs") || throw(ArgumentError("job file: unknown optimizer \"$(s.optimizer)\""))
        x, y, layers, s
    end
end

# --- parameters: ecflow layers <-> MLPGradientFlow.jl ------------------------------------------

layer_spec(layers) = Tuple((size(l.W, 1), activation(l.activation), true) for l in layers)

# params((W, b), ...) stores hcat(W, b) per layer: the bias is the last column (see header)
to_params(layers) = params([(l.W, l.b) for l in layers]...)

function from_params(p, layers)
    map(enumerate(layers)) do (i, l)
        Wb = Matrix{Float64}(getproperty(p, Symbol(:w, i)))
        Layer(Wb[:, 1:end-1], Wb[:, end], l.activation)
    end
end

# --- training ---------------------------------------------------------------------------------

"""
Bytes the second-order path needs: the dense Hessian, a factorisation and a copy of it in the
ODE solver or Newton step (3 P² Float64), plus MLPGradientFlow.jl's per-sample second-derivative
buffers of `Net(derivs = 2)`: (k + n_up) × k × N and n_up × k × N per layer, where n_up is the
number of neurons above the layer.
"""
function second_order_bytes(layers, n_samples)
    P = sum(length(l.W) + length(l.b) for l in layers)
    ks = [size(l.W, 1) for l in layers]
    buffers = sum(begin
                      nup = sum(ks[i+1:end]; init = 0)
                      ks[i] * (ks[i] + 2nup)
                  end for i in eachindex(ks))
    8.0 * (3P^2 + n_samples * buffers)
end

# Our stopping rules in MLPGradientFlow.jl's units. Its loss is SSE/N summed over the d_out
# outputs, ours the MSE averaged over them: minloss = loss_tol · d_out. Its gradient test is
# ‖∇(SSE/N)‖_∞ ≤ min_gnorm, ours ‖∇MSE‖₂ ≤ grad_tol; since ‖v‖₂ ≤ √P ‖v‖_∞, the bound
# min_gnorm = grad_tol · d_out / √P guarantees ours.
mlpgf_minloss(s, d_out) = goal(s) * d_out
mlpgf_min_gnorm(s, d_out, P) = s.grad_tol * d_out / sqrt(P)

# MLPGradientFlow.jl's patience counts loss evaluations, ours steps; a KenCarp58 or trust-region
# step takes several evaluations (stages, Newton iterations, line-search trials).
const EVALUATIONS_PER_STEP = 20

const RULES = ("minloss" => "loss_tol", "min_gnorm" => "grad_tol", "patience" => "patience",
               "maxtime" => "max_seconds", "maxiterations" => "max_steps",
               "t > 1e300" => "flow reached t = 1e300")

function rule(stopped_by)
    text = something(stopped_by, "")
    for (prefix, name) in RULES
        startswith(text, prefix) && return name
    end
    isempty(text) ? "optimizer converged" : text
end

mutable struct Run
    net::Any
    d_out::Int
    n_params::Int
    s::Settings
    t0::Float64
    steps::Int
    history::Vector{NTuple{2,Float64}}
    notes::Vector{String}
    last_phase::String
    last_rule::String
end

elapsed(r::Run) = time() - r.t0
remaining(r::Run) = max(total_seconds(r.s) - elapsed(r), 0.0)
our_loss(r::Run, p) = MLPGradientFlow.loss(r.net, p) / r.d_out

"""
    phase!(run, p; ode, solver, ode_alg, label) -> best parameters

One call of `MLPGradientFlow.train`: the gradient flow (when `ode`) then `solver` (when not
`nothing`), each with its share of the remaining time budget.
"""
function phase!(r::Run, p; ode::Bool, solver, ode_alg, label)
    s = r.s
    budget = s.flow_seconds + s.polish_seconds
    share = budget > 0 ? min(1.0, remaining(r) / budget) : 0.0
    res = train(r.net, p;
                alg = ode_alg,
                optim_solver = something(solver, BFGS()),
                maxiterations_ode = ode ? s.max_steps : 0,
                maxtime_ode = s.flow_seconds * share,
                maxiterations_optim = solver === nothing ? 0 : s.max_steps,
                maxtime_optim = s.polish_seconds * share,
                minloss = mlpgf_minloss(s, r.d_out),
                min_gnorm = mlpgf_min_gnorm(s, r.d_out, r.n_params),
                patience = s.patience * EVALUATIONS_PER_STEP,
                verbosity = 0,
                show_progress = false,
                save_everystep = false,
                result = :raw)
    r.steps += res.ode_iterations + res.optim_iterations
    if ode && res.ode_loss !== nothing
        t_ode = min(elapsed(r), r.history[end][1] + res.ode_time_run)
        push!(r.history, (t_ode, res.ode_loss / r.d_out))
    end
    push!(r.history, (max(elapsed(r), r.history[end][1]), res.loss / r.d_out))
    if solver === nothing
        r.last_phase, r.last_rule = "$label/ode", rule(res.ode_stopped_by)
    else
        r.last_phase, r.last_rule = label, rule(res.optim_stopped_by)
    end
    copy(res.x)
end

function status_name(r::Run, loss, grad_norm)
    loss <= r.s.loss_tol && return "CONVERGED_LOSS"
    r.s.target_loss !== nothing && loss <= r.s.target_loss && return "REACHED_TARGET"
    r.last_rule == "loss_tol" && return "CONVERGED_LOSS"
    (grad_norm <= r.s.grad_tol || r.last_rule == "grad_tol") && return "CONVERGED_GRAD"
    r.last_rule == "max_seconds" && return "MAX_TIME"
    r.last_rule == "max_steps" && return "MAX_STEPS"
    "STALLED"
end

"""
    train_layers(x, y, layers, s) -> (layers, fields)

Train from `layers` on `x` (d_in × N), `y` (d_out × N) with settings `s`; return the best
layers seen and the result attributes of the result file.
"""
function train_layers(x, y, layers, s::Settings)
    t0 = time()
    second_order = second_order_bytes(layers, size(x, 2)) <= s.memory_budget_mb * 2.0^20
    net = Net(; layers = layer_spec(layers), input = x, target = y,
              derivs = second_order ? 2 : 1, verbosity = 0)
    p = to_params(layers)
    notes = String["MLPGradientFlow.jl $(pkgversion(MLPGradientFlow))"]
    if second_order
        ode_alg, flow_name = KenCarp58(), "kencarp58"
        solver, solver_name = if s.optimizer == "bfgs"
            (BFGS(), "bfgs")
        else
            (NewtonTrustRegion(), "newton-trust-region")
        end
        s.optimizer == "lm" && push!(notes, "optimizer lm is not in MLPGradientFlow.jl: used " *
                                            "NewtonTrustRegion, its exact second-order trust-region method")
    else
        ode_alg, flow_name = RK4(), "rk4"
        solver, solver_name = LBFGS(), "lbfgs"
        push!(notes, "student too large for a dense Hessian within memory_budget_mb = " *
                     "$(s.memory_budget_mb): gradient flow with RK4, then L-BFGS")
    end
    s.ode_method != "BDF" && push!(notes, "ode_method $(s.ode_method) applies to the native " *
                                          "engine; the julia engine integrates with $(uppercase(flow_name))")
    r = Run(net, size(y, 1), length(p), s, t0, 0, [(0.0, MLPGradientFlow.loss(net, p) / size(y, 1))],
            notes, "", "")
    if s.schedule == "flow-first"
        p = phase!(r, p; ode = true, solver, ode_alg, label = "$flow_name+$solver_name")
    else
        # lm-first: the optimizer from the initial point; the flow (then the optimizer again)
        # only when it stalls and time is left, as in the native engine
        p = phase!(r, p; ode = false, solver, ode_alg, label = solver_name)
        first_status = status_name(r, our_loss(r, p), Inf)
        if first_status == "STALLED" && remaining(r) > 0
            p = phase!(r, p; ode = true, solver, ode_alg, label = "$flow_name+$solver_name")
        end
    end
    loss = our_loss(r, p)
    grad_norm = norm(MLPGradientFlow.gradient(net, p)) / r.d_out
    isfinite(loss) || error("training diverged: the loss is $loss")
    status = status_name(r, loss, grad_norm)
    hist = [r.history[j][i] for i in 1:2, j in eachindex(r.history)]  # 2 × n
    fields = Dict{String,Any}(
        "loss" => loss,
        "rmse" => sqrt(loss),
        "grad_norm" => grad_norm,
        "status" => status,
        "stopped_by" => "$(r.last_phase): $(r.last_rule)",
        "steps" => Int64(r.steps),
        "seconds" => elapsed(r),
        "engine" => "julia",
        # a Julia 2 × n matrix is written as an HDF5 (n, 2) dataspace, read by h5py as (n, 2)
        "history" => Matrix{Float64}(hist),
        "notes" => notes,
    )
    from_params(p, layers), fields
end

# --- result file ------------------------------------------------------------------------------

"""
    write_result(path, layers, fields)

Write an ecflow network file (`ecflow_format = "mlp"`) with `fields` as root attributes,
atomically: a temporary file in the destination folder, renamed at the end.
"""
function write_result(path::AbstractString, layers, fields)
    dest = abspath(path)
    isdir(dirname(dest)) || throw(ArgumentError("$path: folder $(dirname(dest)) does not exist"))
    tmp = joinpath(dirname(dest), ".$(basename(dest)).$(getpid()).tmp")
    try
        h5open(tmp, "w") do f
            attrs(f)["ecflow_format"] = "mlp"
            attrs(f)["version"] = Int64(FORMAT_VERSION)
            for (k, v) in fields
                attrs(f)[k] = v
            end
            lgroup = create_group(f, "layers")
            for (i, l) in enumerate(layers)
                lg = create_group(lgroup, string(i - 1))
                attrs(lg)["activation"] = l.activation
                # HDF5.jl writes a Julia (n_in, n_out) array as the HDF5 (n_out, n_in) dataset
                # that h5py reads as ecflow's (n_out, n_in) weight: write the transpose.
                write_dataset(lg, "weight", permutedims(l.W))
                write_dataset(lg, "bias", l.b)
            end
        end
        mv(tmp, dest; force = true)
    catch
        rm(tmp; force = true)
        rethrow()
    end
    dest
end

"""
    run_job(job_path, result_path)

Read an ecflow job file, train its student, write the result file. Bad jobs throw an
`ArgumentError` whose message names the file and the problem.
"""
function run_job(job_path::AbstractString, result_path::AbstractString)
    x, y, layers, s = read_job(job_path)
    trained, fields = train_layers(x, y, layers, s)
    write_result(result_path, trained, fields)
    nothing
end

function main(args = ARGS)
    if length(args) != 2
        println(stderr, "usage: julia --project=julia julia/worker.jl job.h5 result.h5")
        exit(2)
    end
    try
        run_job(args[1], args[2])
    catch err
        err isa ArgumentError || rethrow()
        println(stderr, "ecflow worker: error: ", err.msg)
        exit(2)
    end
end

end # module ECFlowWorker

if abspath(PROGRAM_FILE) == @__FILE__
    ECFlowWorker.main()
end
