#include "parallel/expert_parallel.h"

#include <numeric>

#include "common/error.h"

namespace condensa::parallel {
namespace {

// What one all-to-all needs again in backward: the group and the row counts. Saved in the
// autograd context as a capsule, so the communicator travels as an object, not an integer.
struct AllToAllPlan : torch::CustomClassHolder {
  AllToAllPlan(Communicator& c, std::vector<int64_t> send, std::vector<int64_t> recv)
      : comm(c), send_rows(std::move(send)), recv_rows(std::move(recv)) {}
  Communicator& comm;
  std::vector<int64_t> send_rows, recv_rows;
};

// x rows sent in blocks of send[j] to rank j; blocks of recv[j] rows received from rank j.
torch::Tensor exchange(Communicator& comm,
                       const torch::Tensor& x,
                       const std::vector<int64_t>& send,
                       const std::vector<int64_t>& recv) {
  auto shape = x.sizes().vec();
  shape[0] = std::accumulate(recv.begin(), recv.end(), int64_t(0));
  auto out = torch::empty(shape, x.options());
  auto in = x.contiguous();
  comm.all_to_all(in, send, out, recv);
  return out;
}

class AllToAllFunction : public torch::autograd::Function<AllToAllFunction> {
 public:
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx,
                               const torch::Tensor& x,
                               const c10::intrusive_ptr<AllToAllPlan>& plan) {
    ctx->saved_data["plan"] = c10::IValue::make_capsule(plan);
    return exchange(plan->comm, x, plan->send_rows, plan->recv_rows);
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext* ctx,
                                                 torch::autograd::variable_list grad) {
    auto plan =
        c10::static_intrusive_pointer_cast<AllToAllPlan>(ctx->saved_data["plan"].toCapsule());
    auto g = exchange(plan->comm, grad[0], plan->recv_rows, plan->send_rows);
    return {g, torch::Tensor()};
  }
};

struct AllToAllHandle : model::DispatchHandle {
  model::PermutationPlan plan;
  std::vector<int64_t> send_rows, recv_rows;
  torch::Tensor group_order;    // received row index of each grouped row
  torch::Tensor inverse_order;  // grouped row index of each received row
};

}  // namespace

torch::Tensor all_to_all_autograd(Communicator& comm,
                                  const torch::Tensor& x,
                                  const std::vector<int64_t>& send_rows,
                                  const std::vector<int64_t>& recv_rows) {
  return AllToAllFunction::apply(x, c10::make_intrusive<AllToAllPlan>(comm, send_rows, recv_rows));
}

ExpertRange expert_range(int64_t num_experts, int64_t ep_size, int64_t ep_rank) {
  TORCH_CHECK(ep_size > 0 && num_experts % ep_size == 0 && ep_rank >= 0 && ep_rank < ep_size,
              "expert_range: ep size ", ep_size, " must divide the number of experts ", num_experts,
              " and ep rank ", ep_rank, " lie in [0, ", ep_size, ")");
  const int64_t per_rank = num_experts / ep_size;
  return {ep_rank * per_rank, per_rank};
}

std::vector<int64_t> expert_node_map(const Mesh& mesh, int64_t num_experts) {
  std::vector<int64_t> node(num_experts);
  for (int r = 0; r < mesh.ep_size(); ++r) {
    const ExpertRange range = expert_range(num_experts, mesh.ep_size(), r);
    for (int64_t e = range.first; e < range.first + range.count; ++e)
      node[e] = mesh.node_of_ep_rank(r);
  }
  return node;
}

model::DispatcherFactory apply_expert_parallel(const Mesh& mesh, int64_t num_experts) {
  if (mesh.ep_size() == 1) {
    return [num_experts](int64_t) { return std::make_shared<model::LocalDispatcher>(num_experts); };
  }
  Communicator* ep = &mesh.ep();  // the mesh's groups outlive the model
  auto expert_node = expert_node_map(mesh, num_experts);
  return [ep, num_experts, expert_node](int64_t) {
    return std::make_shared<AllToAllDispatcher>(*ep, num_experts, expert_node);
  };
}

AllToAllDispatcher::AllToAllDispatcher(Communicator& ep_group,
                                       int64_t num_experts,
                                       std::vector<int64_t> expert_node)
    : comm_(ep_group),
      num_experts_(num_experts),
      local_(expert_range(num_experts, ep_group.size(), ep_group.rank())),
      expert_node_(std::move(expert_node)) {}

model::Dispatched AllToAllDispatcher::dispatch(const torch::Tensor& x_TD,
                                               const torch::Tensor& topk_idx_TK,
                                               const torch::Tensor& probs_TK) {
  const int64_t P = comm_.size(), L = local_.count;
  auto handle = std::make_shared<AllToAllHandle>();
  handle->plan = model::plan_permutation(topk_idx_TK, probs_TK, options.may_drop);
  auto x_send = x_TD.index_select(0, handle->plan.token_of_row);  // sorted by global expert

  // Exchange per-expert counts: rank j receives, from every source, counts for its experts
  // (experts are contiguous per rank, see expert_range, so the [P, L] view splits by rank).
  // (The split sizes must reach the host: the all-to-all needs them.)
  auto counts_E = model::count_rows(handle->plan.expert_of_row, 0, num_experts_).cpu();
  auto counts_in = comm_.to_device(counts_E.view({P, L}));
  auto counts_out = torch::empty_like(counts_in);
  comm_.all_to_all(counts_in, std::vector<int64_t>(P, 1), counts_out, std::vector<int64_t>(P, 1));
  auto recv_counts = comm_.to_cpu(counts_out).contiguous();  // [P sources, L local experts]
  auto send_per_rank = counts_E.view({P, L}).sum(1);
  auto recv_per_rank = recv_counts.sum(1);
  handle->send_rows.assign(send_per_rank.data_ptr<int64_t>(),
                           send_per_rank.data_ptr<int64_t>() + P);
  handle->recv_rows.assign(recv_per_rank.data_ptr<int64_t>(),
                           recv_per_rank.data_ptr<int64_t>() + P);

  auto x_recv = all_to_all_autograd(comm_, x_send, handle->send_rows, handle->recv_rows);

  // Regroup: received rows are (source, expert)-major; experts want (expert, source)-major.
  auto rc = recv_counts.accessor<int64_t, 2>();
  std::vector<int64_t> seg_start(P * L);
  int64_t pos = 0;
  for (int64_t j = 0; j < P; ++j) {
    for (int64_t e = 0; e < L; ++e) seg_start[j * L + e] = pos, pos += rc[j][e];
  }
  std::vector<int64_t> order;
  order.reserve(pos);
  model::Dispatched d;
  d.rows_per_expert.assign(L, 0);
  for (int64_t e = 0; e < L; ++e) {
    for (int64_t j = 0; j < P; ++j) {
      for (int64_t r = 0; r < rc[j][e]; ++r) order.push_back(seg_start[j * L + e] + r);
      d.rows_per_expert[e] += rc[j][e];
    }
  }
  auto dev = x_TD.device();
  d.rows_per_expert_E = torch::tensor(d.rows_per_expert, torch::kInt64).to(dev);
  handle->group_order = torch::tensor(order, torch::kInt64).to(dev);
  handle->inverse_order = torch::empty_like(handle->group_order);
  if (pos > 0)
    handle->inverse_order.index_copy_(0, handle->group_order,
                                      torch::arange(pos, handle->group_order.options()));
  d.x_ND = x_recv.index_select(0, handle->group_order);
  d.handle = handle;
  return d;
}

torch::Tensor AllToAllDispatcher::combine(const torch::Tensor& y_ND,
                                          const model::DispatchHandle& h) {
  const auto& handle = static_cast<const AllToAllHandle&>(h);
  auto y_recv = y_ND.index_select(0, handle.inverse_order);  // back to (source, expert)-major
  auto y_send = all_to_all_autograd(comm_, y_recv, handle.recv_rows, handle.send_rows);
  return model::unpermute_weighted(y_send, handle.plan.token_of_row, handle.plan.prob_of_row,
                                   handle.plan.num_tokens);
}

}  // namespace condensa::parallel
